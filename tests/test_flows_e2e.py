"""End to end on a real Prefect server with served flows and a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import aresume_flow_run
from sqlalchemy import select

from flows import commands
from models.tables import AppliedEffect, AuditEvent, Decision, Staff
from tasks.adapters import Adapters
from tasks.steps import orders
from tests.conftest import FlowServer
from tests.e2e import aged, body, decide, status, submit, text_of, wait_mails, wait_status

pytestmark = pytest.mark.e2e
PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")


def _assert_no_personal_data(mails: list, reference: str) -> None:
    for m in mails:
        text = text_of(m)
        assert reference in text
        assert not PNR_SHAPE.search(text), text
        assert "Hot mot patienten" not in text  # free text never leaves the database


def _complete(ad: Adapters, reference: str, region: str = "kalmar") -> None:
    R = region.upper()
    wait_status(ad, reference, "awaiting_assessment")
    decide(ad, reference, "harm_assessment", f"DEMO-{R}-ASSESSOR",
           {"harm_found": True, "decision": "restrict", "rationale": "Hot mot patienten", "review_after_days": 180})
    wait_status(ad, reference, "awaiting_approval")
    decide(ad, reference, "approval", f"DEMO-{R}-HEAD", {"approved": True, "comment": "ok"})
    wait_status(ad, reference, "completed")


def test_seal_or_lock_end_to_end(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(prefect_ad, body("seal_or_lock"))
    _complete(prefect_ad, ref)
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    _assert_no_personal_data(got, ref)
    assert "19121212-****" in text_of(got[0])


def test_restore_access_end_to_end(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    # The lock to restore: the patient's own request (approval only: one resumed run, not two).
    first = submit(prefect_ad, body("seal_or_lock", initiative="patient", actions=["lock_login"]))
    wait_status(prefect_ad, first, "awaiting_approval")
    decide(prefect_ad, first, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
    wait_status(prefect_ad, first, "completed")
    ref = submit(prefect_ad, body("restore_access", actions=["lock_login"]))
    _complete(prefect_ad, ref)
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    _assert_no_personal_data(got, ref)


def test_block_guardian_end_to_end(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    child = aged(8, serial=412)
    ref = submit(prefect_ad, body("block_guardian", patient_personal_number=child,
                                  guardian_personal_number=aged(40, 551), region="jonkoping"),
                 actor="DEMO-JONKOPING-CLINICIAN")
    _complete(prefect_ad, ref, "jonkoping")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-jonkoping-clinician@jonkoping.invalid",
                                            "demo-jonkoping-head@jonkoping.invalid"]
    _assert_no_personal_data(got, ref)


def test_minor_access_end_to_end(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(prefect_ad, body("minor_access", patient_personal_number=aged(14, 308), region="stockholm",
                                  minor_access={"grant": True, "recipient": "minor"}), actor="DEMO-STOCKHOLM-CLINICIAN")
    _complete(prefect_ad, ref, "stockholm")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-stockholm-clinician@stockholm.invalid",
                                            "demo-stockholm-head@stockholm.invalid"]
    _assert_no_personal_data(got, ref)


def test_patient_initiative_skips_harm_assessment_with_reason(prefect_ad: Adapters, flow_server: FlowServer,
                                                              smtp: Path) -> None:
    ref = submit(prefect_ad, body("seal_or_lock", initiative="patient", actions=["seal_journal"],
                                  region="ostergotland"), actor="DEMO-OSTERGOTLAND-CLINICIAN")
    wait_status(prefect_ad, ref, "awaiting_approval")
    with prefect_ad.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                         AuditEvent.action == "stage_planned")))
    harm = next(e for e in events if e.detail["stage"] == "harm_assessment")
    assert harm.detail == {"stage": "harm_assessment", "required": False, "rule": "patient_own_request"}
    decide(prefect_ad, ref, "approval", "DEMO-OSTERGOTLAND-HEAD", {"approved": True})
    wait_status(prefect_ad, ref, "completed")


def test_rejected_by_head_emails_orderer_only(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(prefect_ad, body("seal_or_lock"))
    wait_status(prefect_ad, ref, "awaiting_assessment")
    decide(prefect_ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(prefect_ad, ref, "awaiting_approval")
    decide(prefect_ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": False, "comment": "Inte motiverat"})
    wait_status(prefect_ad, ref, "rejected")
    got = wait_mails(smtp, ref, 1)
    assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
    assert "avslagits" in str(got[0]["Subject"])
    _assert_no_personal_data(got, ref)


def test_cancelled_order_ends_its_run(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(prefect_ad, body("seal_or_lock"))
    wait_status(prefect_ad, ref, "awaiting_assessment")
    asyncio.run(commands.cancel(prefect_ad, ref, "DEMO-KALMAR-CLINICIAN", "Fel patient"))
    assert status(prefect_ad, ref) == "cancelled"
    got = wait_mails(smtp, ref, 1)
    assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
    with pytest.raises(orders.Conflict):
        decide(prefect_ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    assert asyncio.run(_run_state(prefect_ad, ref)) == "CANCELLED"


async def _run_state(ad: Adapters, reference: str, timeout: float = 30) -> str:
    """The final state type of the order's run (waiting until it has one)."""
    run_id = _run_id(ad, reference)
    deadline = time.monotonic() + timeout
    while True:
        async with get_client() as c:
            fr = await c.read_flow_run(UUID(run_id))
        if fr.state is not None and (fr.state.is_final() or time.monotonic() > deadline):
            return fr.state.type.value
        await asyncio.sleep(0.25)


def _run_id(ad: Adapters, reference: str) -> str:
    with ad.db.session() as s:
        run_id = orders.get(s, reference).flow_run_id
    assert run_id
    return run_id


def test_submitter_cannot_decide_own_order(ad: Adapters) -> None:
    """Four eyes in the app: nothing of Prefect is involved, so the in-process engine runs the order."""
    # The clinician is also an assessor here: four eyes must still refuse.
    with ad.db.session() as s:
        s.get(Staff, "DEMO-KALMAR-CLINICIAN2").roles = ["clinician", "assessor"]  # type: ignore[union-attr]
    try:
        ref = submit(ad, body("seal_or_lock"), actor="DEMO-KALMAR-CLINICIAN2")
        assert status(ad, ref) == "awaiting_assessment"
        with pytest.raises(orders.Forbidden) as exc:
            decide(ad, ref, "harm_assessment", "DEMO-KALMAR-CLINICIAN2", {"harm_found": True, "decision": "restrict"})
        assert exc.value.refusal.code == "own_order"
        assert status(ad, ref) == "awaiting_assessment"
    finally:
        with ad.db.session() as s:
            s.get(Staff, "DEMO-KALMAR-CLINICIAN2").roles = ["clinician"]  # type: ignore[union-attr]


def _refused_in_flow(ad: Adapters, reference: str, attempts: int) -> None:
    """`attempts` resumes that did not come from the app were refused by the flow and audited with channel
    `prefect` (nobody blamed: the identity in them is unverified), the run waits again under a fresh key,
    and nothing was decided."""
    refused = _wait_audit(ad, reference, "decision_refused", count=attempts, channel="prefect")
    assert [(e.actor, e.channel, e.from_status, e.to_status, e.detail) for e in refused] == [
        ("unknown", "prefect", "awaiting_assessment", None,
         {"stage": "harm_assessment", "why": "not_from_app", "by": "flow"})] * attempts
    assert asyncio.run(_paused_key(ad, reference)) == f"harm-assessment-{attempts}"
    assert status(ad, reference) == "awaiting_assessment"
    with ad.db.session() as s:
        order = orders.get(s, reference)
        assert [(d.decided_by, d.state, d.refusal) for d in order.decisions] == \
            [("", "refused", "not_from_app")] * attempts
    assert not [e for e in _audit(ad, reference) if e.action in ("assessed", "decision_proposed")]


def _then_a_proper_decision_goes_through(ad: Adapters, reference: str) -> None:
    """A decision stored by the app still goes through, under the next suspension key."""
    decide(ad, reference, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ad, reference, "awaiting_approval")
    assessed = [e for e in _audit(ad, reference) if e.action == "assessed"]
    assert [(e.actor, e.from_status, e.to_status) for e in assessed] == [
        ("DEMO-KALMAR-ASSESSOR", "awaiting_assessment", "awaiting_approval")]


def test_wrong_role_refused_in_app_and_forged_decision_ids_refused_in_flow(
        ad: Adapters, prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    """The app refuses a person without the role. Prefect's UI and API can resume the run directly, but a
    decision reaches a run only as the id of a decision the app stored for that order and stage: a resume
    with no id (what the dashboard's form sends as it is) or with another order's decision is refused by
    the flow and audited, and the order keeps waiting under a fresh suspension key."""
    ref = submit(prefect_ad, body("seal_or_lock"))
    # Another order's decision, stored by the app and accepted by its own run: a real id, not this order's.
    # (That order runs in this process: only its decision's id is needed here.)
    done = submit(ad, body("seal_or_lock", initiative="patient", actions=["seal_journal"], region="ostergotland"),
                  actor="DEMO-OSTERGOTLAND-CLINICIAN")
    decide(ad, done, "approval", "DEMO-OSTERGOTLAND-HEAD", {"approved": True})
    assert status(ad, done) == "completed"
    with ad.db.session() as s:
        [foreign] = [d.id for d in orders.get(s, done).decisions if d.stage == "approval"]
    wait_status(prefect_ad, ref, "awaiting_assessment")
    with pytest.raises(orders.Forbidden):
        decide(prefect_ad, ref, "harm_assessment", "DEMO-KALMAR-SUPPORT", {"harm_found": True, "decision": "restrict"})
    [app_refusal] = [e for e in _audit(prefect_ad, ref) if e.action == "decision_refused"]
    assert (app_refusal.actor, app_refusal.channel, app_refusal.detail["by"]) == ("DEMO-KALMAR-SUPPORT", "app", "app")

    for attempt, run_input in enumerate(({"decision_id": foreign}, {}), start=1):
        key, rejected = asyncio.run(_resume_when_paused(prefect_ad, ref, run_input))
        assert rejected is None, rejected
        assert key == f"harm-assessment-{attempt - 1}"  # each forged resume answered a fresh suspension
        _refused_in_flow(prefect_ad, ref, attempt)
    with prefect_ad.db.session() as s:
        assert s.get(Decision, foreign).state == "accepted"  # the other order's decision is untouched
    assert status(prefect_ad, done) == "completed"
    _then_a_proper_decision_goes_through(prefect_ad, ref)


def test_a_forged_decision_typed_into_prefect_is_refused_and_audited(prefect_ad: Adapters, flow_server: FlowServer,
                                                                     smtp: Path) -> None:
    """Issue 16's reproduction: a resume through Prefect's API that names a decider and an outcome (the run
    input the flows took before) decides nothing, is audited as a refused attempt (channel `prefect`), and
    the order keeps waiting under a fresh suspension key."""
    ref = submit(prefect_ad, body("seal_or_lock"))
    wait_status(prefect_ad, ref, "awaiting_assessment")
    key, rejected = asyncio.run(_resume_when_paused(
        prefect_ad, ref, {"decided_by": "DEMO-KALMAR-ASSESSOR", "harm_found": True, "decision": "restrict"}))
    assert key == "harm-assessment-0"
    # Prefect may refuse the input itself; the order must still keep waiting (and the run stay suspended).
    assert asyncio.run(_paused_key(prefect_ad, ref)) in ("harm-assessment-0", "harm-assessment-1")
    assert status(prefect_ad, ref) == "awaiting_assessment"
    assert rejected is None, f"Prefect refused the forged input before the flow saw it, so nothing audited it: {rejected}"
    _refused_in_flow(prefect_ad, ref, 1)
    _then_a_proper_decision_goes_through(prefect_ad, ref)


def test_restart_between_stages_completes_once(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(prefect_ad, body("seal_or_lock", patient_personal_number=aged(50, 771)))
    wait_status(prefect_ad, ref, "awaiting_assessment")
    flow_server.kill()
    try:
        decide(prefect_ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        time.sleep(1)
        assert status(prefect_ad, ref) == "awaiting_assessment"  # nobody serves the flow: nothing moves
    finally:
        flow_server.start()
    wait_status(prefect_ad, ref, "awaiting_approval")
    flow_server.kill()
    flow_server.start()
    decide(prefect_ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
    wait_status(prefect_ad, ref, "completed")
    got = wait_mails(smtp, ref, 2)
    time.sleep(3)  # give a doubled email time to show up
    assert len(wait_mails(smtp, ref, 2)) == 2
    with prefect_ad.db.session() as s:
        effects = list(s.scalars(select(AppliedEffect).where(AppliedEffect.order_reference == ref)))
    executed = [e for e in _audit(prefect_ad, ref) if e.action == "executed"]
    assert sorted(e.effect for e in effects) == ["lock_login", "seal_journal"]
    assert len(executed) == 1
    _assert_no_personal_data(got, ref)


async def _paused_key(ad: Adapters, reference: str, timeout: float = 60) -> str:
    """The pause key of the order's run once it is suspended."""
    run_id = UUID(_run_id(ad, reference))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with get_client() as c:
            fr = await c.read_flow_run(run_id)
        if fr.state and fr.state.is_paused() and fr.state.state_details.pause_key:
            return str(fr.state.state_details.pause_key)
        await asyncio.sleep(0.25)
    raise AssertionError("run never suspended")


async def _resume_when_paused(ad: Adapters, reference: str, run_input: dict[str, Any]) -> tuple[str, str | None]:
    """Resume the order's run through Prefect's API, as the dashboard would: the key it answered, and
    Prefect's reason when Prefect itself refused the input (None when it took it)."""
    key = await _paused_key(ad, reference)
    try:
        await aresume_flow_run(UUID(_run_id(ad, reference)), run_input=run_input)
    except RuntimeError as exc:  # "Cannot resume this run: Run input validation failed: ..."
        return key, str(exc)
    return key, None


def _audit(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def _wait_audit(ad: Adapters, reference: str, action: str, count: int, channel: str,
                timeout: float = 60) -> list[AuditEvent]:
    deadline = time.monotonic() + timeout
    rows: list[AuditEvent] = []
    while time.monotonic() < deadline:
        rows = [e for e in _audit(ad, reference) if e.action == action and e.channel == channel]
        if len(rows) >= count:
            return rows
        time.sleep(0.25)
    raise AssertionError(f"{reference}: {len(rows)} {action}, wanted {count}")
