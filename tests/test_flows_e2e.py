"""End to end on a real Prefect server with served flows and a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import aresume_flow_run
from sqlalchemy import select

from flows import commands
from models.tables import AppliedEffect, AuditEvent, Staff
from tasks.adapters.database import session
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


def _complete(reference: str, region: str = "kalmar") -> None:
    R = region.upper()
    wait_status(reference, "awaiting_assessment")
    decide(reference, "harm_assessment", f"DEMO-{R}-ASSESSOR",
           {"harm_found": True, "decision": "restrict", "rationale": "Hot mot patienten", "review_after_days": 180})
    wait_status(reference, "awaiting_approval")
    decide(reference, "approval", f"DEMO-{R}-HEAD", {"approved": True, "comment": "ok"})
    wait_status(reference, "completed")


def test_seal_or_lock_end_to_end(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock"))
    _complete(ref)
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    _assert_no_personal_data(got, ref)
    assert "19121212-****" in text_of(got[0])


def test_restore_access_end_to_end(flow_server: FlowServer, smtp: Path) -> None:
    first = submit(body("seal_or_lock", actions=["lock_login"]))
    _complete(first)
    ref = submit(body("restore_access", actions=["lock_login"]))
    _complete(ref)
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    _assert_no_personal_data(got, ref)


def test_block_guardian_end_to_end(flow_server: FlowServer, smtp: Path) -> None:
    child = aged(8, serial=412)
    ref = submit(body("block_guardian", patient_personal_number=child, guardian_personal_number=aged(40, 551),
                      region="jonkoping"), actor="DEMO-JONKOPING-CLINICIAN")
    _complete(ref, "jonkoping")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-jonkoping-clinician@jonkoping.invalid",
                                            "demo-jonkoping-head@jonkoping.invalid"]
    _assert_no_personal_data(got, ref)


def test_minor_access_end_to_end(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("minor_access", patient_personal_number=aged(14, 308), region="stockholm",
                      minor_access={"grant": True, "recipient": "minor"}), actor="DEMO-STOCKHOLM-CLINICIAN")
    _complete(ref, "stockholm")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-stockholm-clinician@stockholm.invalid",
                                            "demo-stockholm-head@stockholm.invalid"]
    _assert_no_personal_data(got, ref)


def test_patient_initiative_skips_harm_assessment_with_reason(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock", initiative="patient", actions=["seal_journal"], region="ostergotland"),
                 actor="DEMO-OSTERGOTLAND-CLINICIAN")
    wait_status(ref, "awaiting_approval")
    with session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                         AuditEvent.action == "stage_planned")))
    harm = next(e for e in events if e.detail["stage"] == "harm_assessment")
    assert harm.detail == {"stage": "harm_assessment", "required": False, "rule": "patient_own_request"}
    decide(ref, "approval", "DEMO-OSTERGOTLAND-HEAD", {"approved": True})
    wait_status(ref, "completed")


def test_rejected_by_head_emails_orderer_only(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock"))
    wait_status(ref, "awaiting_assessment")
    decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ref, "awaiting_approval")
    decide(ref, "approval", "DEMO-KALMAR-HEAD", {"approved": False, "comment": "Inte motiverat"})
    wait_status(ref, "rejected")
    got = wait_mails(smtp, ref, 1)
    assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
    assert "avslagits" in str(got[0]["Subject"])
    _assert_no_personal_data(got, ref)


def test_cancelled_order_ends_its_run(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock"))
    wait_status(ref, "awaiting_assessment")
    asyncio.run(commands.cancel(ref, "DEMO-KALMAR-CLINICIAN", "Fel patient"))
    assert status(ref) == "cancelled"
    got = wait_mails(smtp, ref, 1)
    assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
    with pytest.raises(orders.Conflict):
        decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    assert asyncio.run(_run_state(ref)) == "CANCELLED"


async def _run_state(reference: str, timeout: float = 30) -> str:
    """The final state type of the order's run (waiting until it has one)."""
    with session() as s:
        run_id = orders.get(s, reference).flow_run_id
    assert run_id
    deadline = time.monotonic() + timeout
    while True:
        async with get_client() as c:
            fr = await c.read_flow_run(UUID(run_id))
        if fr.state is not None and (fr.state.is_final() or time.monotonic() > deadline):
            return fr.state.type.value
        await asyncio.sleep(0.25)


def test_submitter_cannot_decide_own_order(flow_server: FlowServer) -> None:
    # The clinician is also an assessor here: four eyes must still refuse.
    with session() as s:
        s.get(Staff, "DEMO-KALMAR-CLINICIAN2").roles = ["clinician", "assessor"]  # type: ignore[union-attr]
    try:
        ref = submit(body("seal_or_lock"), actor="DEMO-KALMAR-CLINICIAN2")
        wait_status(ref, "awaiting_assessment")
        with pytest.raises(orders.Forbidden) as exc:
            decide(ref, "harm_assessment", "DEMO-KALMAR-CLINICIAN2", {"harm_found": True, "decision": "restrict"})
        assert exc.value.refusal.code == "own_order"
        assert status(ref) == "awaiting_assessment"
    finally:
        with session() as s:
            s.get(Staff, "DEMO-KALMAR-CLINICIAN2").roles = ["clinician"]  # type: ignore[union-attr]


def test_wrong_role_refused_in_app_and_in_flow(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock"))
    wait_status(ref, "awaiting_assessment")
    with pytest.raises(orders.Forbidden):
        decide(ref, "harm_assessment", "DEMO-KALMAR-SUPPORT", {"harm_found": True, "decision": "restrict"})
    # The Prefect UI can resume the run directly: the flow re-checks and refuses, and the order keeps waiting.
    asyncio.run(_resume_until_accepted(ref, {"decided_by": "DEMO-KALMAR-SUPPORT", "harm_found": True,
                                             "decision": "restrict"}))
    _wait_audit(ref, "decision_refused", by="flow")
    assert wait_status(ref, "awaiting_assessment") == "awaiting_assessment"
    # A proper decision under the next suspension key still goes through.
    decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ref, "awaiting_approval")


def test_restart_between_stages_completes_once(flow_server: FlowServer, smtp: Path) -> None:
    ref = submit(body("seal_or_lock", patient_personal_number=aged(50, 771)))
    wait_status(ref, "awaiting_assessment")
    flow_server.kill()
    try:
        decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        time.sleep(1)
        assert status(ref) == "awaiting_assessment"  # nobody serves the flow: nothing moves
    finally:
        flow_server.start()
    wait_status(ref, "awaiting_approval")
    flow_server.kill()
    flow_server.start()
    decide(ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
    wait_status(ref, "completed")
    got = wait_mails(smtp, ref, 2)
    time.sleep(3)  # give a doubled email time to show up
    assert len(wait_mails(smtp, ref, 2)) == 2
    with session() as s:
        effects = list(s.scalars(select(AppliedEffect).where(AppliedEffect.order_reference == ref)))
        executed = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                           AuditEvent.action == "executed")))
    assert sorted(e.effect for e in effects) == ["lock_login", "seal_journal"]
    assert len(executed) == 1
    _assert_no_personal_data(got, ref)


async def _resume_until_accepted(reference: str, run_input: dict) -> None:
    with session() as s:
        run_id = orders.get(s, reference).flow_run_id
    assert run_id
    for _ in range(120):
        async with get_client() as c:
            fr = await c.read_flow_run(UUID(run_id))
        if fr.state and fr.state.is_paused():
            await aresume_flow_run(UUID(run_id), run_input=run_input)
            return
        await asyncio.sleep(0.25)
    raise AssertionError("run never suspended")


def _wait_audit(reference: str, action: str, by: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session() as s:
            rows = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference,
                                                           AuditEvent.action == action)))
        if any(r.detail.get("by") == by for r in rows):
            return
        time.sleep(0.25)
    raise AssertionError(f"no {action} by {by}")
