"""Faults survived, end to end with the real Prefect server, served flows and SMTP server:

- the serving process and its flow runs killed with SIGKILL (a failpoint kills the whole process group, as
  a power cut would) at every stage boundary — the order received, each decision recorded (callback,
  harm assessment, approval), the order executed, the final status set with its emails queued but not
  delivered — and started again: each order ends once, each effect applied once, each email sent once,
  no status transition recorded twice;
- the SMTP server down while orders finish, then back: every email delivered exactly once;
- an order run that fails fires the shipped automation "Order run failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.routine import ORDER_FLOW_NAMES
from models.status import FINAL, OrderStatus
from models.tables import AppliedEffect, AuditEvent, OutboxMessage
from tasks.adapters import Adapters
from tasks.steps import orders
from tests.conftest import FlowServer, SmtpSink
from tests.e2e import aged, body, decide, mails, status, submit, wait_mails, wait_status

pytestmark = pytest.mark.e2e

# Who decides each human step in these orders (Kalmar's demo staff); the urgent order's approver is the
# bakjour out of office hours, as its stage plan says.
DECIDER = {"awaiting_callback": ("callback", "DEMO-KALMAR-ONCALL"),
           "awaiting_assessment": ("harm_assessment", "DEMO-KALMAR-ASSESSOR"),
           "awaiting_approval": ("approval", "DEMO-KALMAR-HEAD")}


def _audit(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def _actions(ad: Adapters, reference: str, action: str) -> int:
    return sum(1 for e in _audit(ad, reference) if e.action == action)


def _decide_what_waits(ad: Adapters, reference: str, st: str) -> None:
    stage, actor = DECIDER[st]
    decision: dict[str, Any] = {"note": ""}
    if stage == "harm_assessment":
        decision = {"harm_found": True, "decision": "restrict"}
    elif stage == "approval":
        with ad.db.session() as s:
            role = (orders.get(s, reference).stage_plan.get("approval") or {}).get("role")
        actor = "DEMO-KALMAR-BAKJOUR" if role == "bakjour" else actor
        decision = {"approved": True}
    decide(ad, reference, stage, actor, decision)


def _wait_until_no_order_run_is_busy(timeout: float = 30) -> None:
    """Let other tests' orders reach their human step first: each crash would otherwise restart their runs
    too, and every restart costs a process start on a loaded machine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async def busy() -> int:
        async with get_client() as client:
            return len(await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[*ORDER_FLOW_NAMES, "urgent-order"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]))), limit=20))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and asyncio.run(busy()):
        time.sleep(1)


def _unfired(tmp_path: Path, ref: str, points: list[str]) -> set[str]:
    return {p for p in points if not (tmp_path / f"{p}-{ref}").exists()}


@pytest.mark.timeout(600)
def test_sigkill_at_every_stage_boundary_each_order_ends_once(prefect_ad: Adapters, flow_server: FlowServer,
                                                               smtp: Path, tmp_path: Path) -> None:
    """Two orders in flight together, each armed for its own boundaries (six crashes in all, one per
    boundary): whichever reaches an armed point first takes the whole group down, the other dies wherever
    it is, and the operator starts the server again."""
    _wait_until_no_order_run_is_busy()
    flow_server.kill()
    crashing = FlowServer({**flow_server.env, "RO_FAILPOINTS": "after-receive,after-decision,after-execute,after-confirm",
                           "RO_FAILPOINT_DIR": str(tmp_path)})
    ad = prefect_ad
    routine = submit(ad, body("seal_or_lock", patient_personal_number=aged(47, 613)))  # nobody serves them yet
    urgent = submit(ad, body("seal_or_lock", patient_personal_number=aged(33, 614), urgent=True))
    armed = {routine: ["after-receive", "after-decision:harm_assessment", "after-decision:approval", "after-execute"],
             urgent: ["after-decision:callback", "after-confirm"]}
    for ref, points in armed.items():
        (tmp_path / f"{ref}.armed").write_text("\n".join(points))
    wanted_end = {routine: "completed", urgent: "completed"}
    crashes = 0
    final_since = 0.0
    decided: set[tuple[str, str]] = set()
    try:
        crashing.start()
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            assert crashing.proc is not None
            if crashing.proc.poll() is not None:  # a failpoint fired: the group is dead; start it again
                crashes += 1
                crashing.proc = None
                crashing.start()
            states = {ref: status(ad, ref) for ref in armed}
            if all(OrderStatus(st) in FINAL for st in states.values()):
                final_since = final_since or time.monotonic()
                # Every point fired, or the last live run had its chance to reach the one still armed.
                if not any(_unfired(tmp_path, ref, points) for ref, points in armed.items()) or \
                        time.monotonic() - final_since > 10:
                    break
            for ref, st in states.items():
                if st in DECIDER and (ref, st) not in decided:
                    decided.add((ref, st))
                    _decide_what_waits(ad, ref, st)
            time.sleep(0.5)
        assert crashing.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):  # the last point may have fired as the loop ended
            crashes += crashing.proc.wait(2) is not None
    finally:
        crashing.kill()
        flow_server.start()
    fired = {ref: [p for p in points if (tmp_path / f"{p}-{ref}").exists()] for ref, points in armed.items()}
    # Most points fire; one may be passed over when the other order's failpoint took the group down just after
    # that step committed (its restarted run finds the step done): still a kill at a stage boundary.
    assert sum(len(p) for p in fired.values()) >= sum(len(p) for p in armed.values()) - 1, fired
    assert crashes == sum(len(p) for p in fired.values()), (crashes, fired)
    for ref, end in wanted_end.items():
        wait_status(ad, ref, end)

    # The head and the orderer; the urgent one also paged on-call, and (issue 13) its assessor and approver are
    # told unless this test's decision was stored before the run reached the stage (then nobody waits for them).
    expected_mails = {routine: (2, 2), urgent: (3, 5)}
    for ref, (n, _) in expected_mails.items():
        wait_mails(smtp, ref, n, timeout=90)
    time.sleep(3)  # time for a doubled email to show up
    for ref, (n, most) in expected_mails.items():
        ids = [m["Message-ID"] for m in mails(smtp, ref)]
        with ad.db.session() as s:
            queued = {m.message_id for m in s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == ref))}
        assert n <= len(ids) <= most and sorted(ids) == sorted(queued), (ref, ids, queued)  # each one, exactly once
    with ad.db.session() as s:
        effects = {ref: sorted(e.effect for e in s.scalars(select(AppliedEffect)
                                                            .where(AppliedEffect.order_reference == ref)))
                   for ref in armed}
    assert effects == {routine: ["lock_login", "seal_journal"], urgent: ["lock_login", "seal_journal"]}
    for ref in armed:
        events = _audit(ad, ref)
        transitions = Counter((e.from_status, e.to_status) for e in events if e.to_status)
        assert all(n == 1 for n in transitions.values()), (ref, transitions)
        planned = Counter(str(e.detail.get("stage")) for e in events if e.action == "stage_planned")
        assert all(n == 1 for n in planned.values()), (ref, planned)
        assert _actions(ad, ref, "run_started") >= 2  # the crashed runs were replaced, each with a restart key
    assert _actions(ad, routine, "executed") == 1 and _actions(ad, routine, "assessed") == 1
    assert _actions(ad, routine, "approved") == 1 and _actions(ad, urgent, "callback_recorded") == 1
    assert {ref: status(ad, ref) for ref in armed} == wanted_end


def test_smtp_down_then_back_delivers_every_email_exactly_once(prefect_ad: Adapters, flow_server: FlowServer,
                                                               smtp_sink: SmtpSink, smtp: Path) -> None:
    ad = prefect_ad
    refs = [submit(ad, body("seal_or_lock", patient_personal_number=aged(52, 400 + i))) for i in range(2)]
    for ref in refs:
        wait_status(ad, ref, "awaiting_assessment")
        decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    for ref in refs:
        wait_status(ad, ref, "awaiting_approval")
    smtp_sink.stop()
    try:
        for ref in refs:
            decide(ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
        for ref in refs:
            wait_status(ad, ref, "completed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the run tried to send, and the housekeeping loop after it
            with ad.db.session() as s:
                tried = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference.in_(refs))))
            if len(tried) == 4 and all(m.attempts >= 1 for m in tried):
                break
            time.sleep(0.5)
        assert len(tried) == 4 and all(m.status == "pending" and m.attempts >= 1 for m in tried), \
            [(m.status, m.attempts) for m in tried]
        assert not any(mails(smtp, ref) for ref in refs)
    finally:
        smtp_sink.start()
    for ref in refs:
        wait_mails(smtp, ref, 2, timeout=90)  # the next retry after the backoff
    time.sleep(3)
    assert [len(mails(smtp, ref)) for ref in refs] == [2, 2]
    with ad.db.session() as s:
        sent = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference.in_(refs))))
    assert all(m.status == "sent" for m in sent)


def _automation_events(automation_id: str, since: datetime) -> list[str]:
    """Every event about the automation since `since`, as JSON."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    async def read() -> list[str]:
        f = EventFilter(occurred=EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(hours=1)),
                        resource=EventResourceFilter(id=[f"prefect.automation.{automation_id}"]))
        async with get_client() as c:
            page = await c.read_events(filter=f, limit=50)
        return [e.model_dump_json() for e in page.events]
    return asyncio.run(read())


def test_a_failed_order_run_fires_the_shipped_automation(flow_server: FlowServer) -> None:
    """"Order run failed" (tasks/adapters/automations.py) reacts to a real failed run of an order flow. Its action in
    the shipped configuration is "do nothing": the effect is the automation's own record in the dashboard
    (`prefect.automation.triggered` and `prefect.automation.action.executed`, related to the run)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment

    from tasks.adapters.automations import RUN_FAILED, ensure_automations
    automation_id = ensure_automations()[RUN_FAILED]
    since = datetime.now(UTC) - timedelta(seconds=5)
    # As when someone starts the flow by hand from the dashboard with a reference the orders database does not
    # have: the first step cannot load the order and the run fails. (No order, so the reconciler never
    # starts it again.)
    missing = "RO-1999-999999"

    async def start_and_wait() -> tuple[str, Any]:
        run = await arun_deployment("seal-or-lock/seal-or-lock", parameters={"reference": missing}, timeout=0,
                                    flow_run_name=missing, as_subflow=False)
        async with get_client() as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                state = (await client.read_flow_run(run.id)).state
                if state is not None and state.is_final():
                    return str(run.id), state
                await asyncio.sleep(0.5)
        raise AssertionError("the run did not end")
    run_id, state = asyncio.run(start_and_wait())
    assert state.is_failed(), state

    # The trigger names the failed run; the action it ran (do-nothing) names the trigger's event.
    executed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not executed:
        events = [json.loads(text) for text in _automation_events(automation_id, since)]
        triggered = {e["id"] for e in events if e["event"] == "prefect.automation.triggered" and run_id in json.dumps(e)}
        executed = [e for e in events if e["event"] == "prefect.automation.action.executed"
                    and any(r["prefect.resource.id"] in {f"prefect.event.{t}" for t in triggered} for r in e["related"])]
        time.sleep(1)
    assert triggered and executed, [e["event"] for e in events]
    assert executed[0]["payload"]["action_type"] == "do-nothing"
