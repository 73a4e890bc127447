"""The routine's steps as Prefect tasks. Every one is idempotent against the orders database.

A suspended flow run re-runs from the top when it is resumed, so each step first looks at the order's
state and does nothing that is already done. Results are references and statuses only, and are not
persisted: the orders database, not Prefect's result store, is what makes a re-run safe, on whichever
machine the resumed run lands.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.authority import refusal
from models.clock import Clock, SystemClock
from models.regions import load_regions
from models.rules import check_order, plan_stages
from models.schemas import MinorAccess, OrderRequest
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Decision, Order
from tasks import audit, deadlines, directory, mail
from tasks.database import session
from tasks.gateway import ExecutionRefused, GatewayUnavailable, gateway, record_effects
from tasks.orders import STAGE_STATUS, decider, facts, get, rule_context, stored_request, transition
from tasks.settings import settings

log = logging.getLogger(__name__)
SYSTEM = "system"
HUMAN_STAGES = ("callback", "harm_assessment", "approval")
FAILED_EVENT = "order.failed"
# Executed restrictions made on care's initiative get a review date (DOMAIN: regular re-assessment). A restore
# lifts a restriction and minor access grants access: neither is a restriction to re-assess.
REVIEWED_TYPES = ("seal_or_lock", "block_guardian")

# Where the steps get the time; tests put a models.clock.FixedClock here.
clock: Clock = SystemClock()


def _now() -> datetime:
    return clock.now().astimezone(UTC)


def emit_failed(reference: str) -> None:
    """Tell Prefect an order could not be executed (event `order.failed`, the reference only). Never raises:
    the email to support, queued with the status, is what makes sure somebody acts."""
    try:
        from prefect.events import emit_event
        # A stable id: should it be sent twice (a re-run), Prefect stores it once.
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:restriction-orders:{FAILED_EVENT}:{reference}")
        emit_event(event=FAILED_EVENT, id=event_id,
                   resource={"prefect.resource.id": f"order.{reference}", "prefect.resource.name": reference,
                             "order.reference": reference})
    except Exception as exc:
        log.warning("could not emit %s for %s: %s", FAILED_EVENT, reference, type(exc).__name__)


def _request(order: Order) -> OrderRequest:
    minor = MinorAccess(grant=bool(order.minor_grant), recipient=order.minor_recipient,  # type: ignore[arg-type]
                        child_consent=order.child_consent) if order.minor_recipient else None
    return OrderRequest(order_type=order.order_type, initiative=order.initiative,  # type: ignore[arg-type]
                        actions=list(order.actions or []), patient_personal_number=order.patient_pnr,  # type: ignore[arg-type]
                        patient_protected_identity=order.patient_protected, guardian_personal_number=order.guardian_pnr,
                        minor_access=minor, identity_checked_in_person=order.identity_checked, urgent=order.urgent,
                        reason="", care_unit_hsa_id=order.care_unit_hsa_id, region=order.region)


def _first_open_stage(order: Order) -> OrderStatus:
    for stage in HUMAN_STAGES:
        if order.stage_plan.get(stage, {}).get("required"):
            return STAGE_STATUS[stage]
    return OrderStatus.EXECUTING


@task(name="receive-order", persist_result=False, cache_policy=NO_CACHE)
def receive(reference: str) -> str:
    """Check the stored order again, now (its run may start late: the reconciler, a paper order registered
    days after it was signed), then plan the stages (each one required or not, with the rule that said so)
    and open the first."""
    now = _now()
    with session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.SUBMITTED and order.status != OrderStatus.PAPER_FALLBACK:
            return order.status
        if order.status == OrderStatus.SUBMITTED and not _still_valid(s, order, now):
            return order.status
        if not order.stage_plan:
            plan = plan_stages(_request(order), at=order.created_at, hours=load_regions()[order.region].hours)
            stages: dict[str, Any] = {
                "callback": {"required": order.urgent, "role": "on_call" if order.urgent else None,
                             "rule": "urgent_callback" if order.urgent else "not_urgent",
                             "reason": "Brådskande: beredskapen ringer upp inom 30 minuter." if order.urgent
                             else "Inte brådskande: ingen återuppringning."},
            }
            for req in plan.as_list():
                stages[req.stage] = {"required": req.required, "role": req.role, "rule": req.rule, "reason": req.reason}
            order.stage_plan = stages
            for name, st in stages.items():
                audit.record(s, actor=SYSTEM, action="stage_planned", order=order,
                             detail={"stage": name, "required": st["required"], "rule": st["rule"]})
        if order.status == OrderStatus.SUBMITTED:
            transition(s, order, _first_open_stage(order), actor=SYSTEM, action="received", at=now)
        return order.status


def _still_valid(s: Any, order: Order, now: datetime) -> bool:
    """The rules on the stored order at `now`: a child may have turned 16, a restriction may have been lifted
    since it was submitted. Rejected (and the orderer told) when it no longer holds."""
    raw = stored_request(order)
    result = check_order(raw, rule_context(s, raw, now, SYSTEM, "revalidate"))
    if result.ok:
        audit.record(s, actor=SYSTEM, action="validated", order=order, at=now,
                     detail={"warnings": [w.code for w in result.warnings]})
        return True
    transition(s, order, OrderStatus.REJECTED, actor=SYSTEM, action="validation_failed", at=now,
               detail={"codes": sorted({e.code for e in result.errors})})
    mail.queue_confirmations(s, order, extra={"why": "validation_failed"})
    return False


@dataclass(frozen=True)
class StageState:
    state: str            # done | waiting | closed
    attempt: int = 0      # how many decisions were refused: the suspend key's counter
    proposed: int | None = None


@task(name="stage-state", persist_result=False, cache_policy=NO_CACHE)
def stage_state(reference: str, stage: str) -> StageState:
    with session() as s:
        order = get(s, reference)
        if OrderStatus(order.status) in FINAL or order.status == OrderStatus.PAPER_FALLBACK:
            return StageState("closed")
        if order.status != STAGE_STATUS[stage]:
            return StageState("done")
        refused = sum(1 for d in order.decisions if d.stage == stage and d.state == "refused")
        proposed = next((d.id for d in order.decisions if d.stage == stage and d.state == "proposed"), None)
        return StageState("waiting", refused, proposed)


def _outcome(stage: str, run_input: dict[str, Any]) -> str:
    if stage == "harm_assessment":
        return str(run_input.get("decision"))
    if stage == "approval":
        return "approve" if run_input.get("approved") else "reject"
    return "done"


@task(name="record-decision", persist_result=False, cache_policy=NO_CACHE)
def record_decision(reference: str, stage: str, run_input: dict[str, Any], channel: str) -> str:
    """Accept or refuse a decision after checking the decider against the staff directory again."""
    now = _now()
    with session() as s:
        order = get(s, reference)
        if order.status != STAGE_STATUS[stage]:
            return "stale"
        decision: Decision | None = None
        if run_input.get("decision_id") is not None:
            decision = s.get(Decision, int(run_input["decision_id"]))
            if decision is None or decision.order_id != order.id or decision.stage != stage:
                decision = None
        if decision is None:
            decision = Decision(order_id=order.id, stage=stage, decided_by=str(run_input.get("decided_by", "")).upper(),
                                outcome=_outcome(stage, run_input),
                                detail={k: v for k, v in run_input.items() if k not in ("decided_by", "decision_id")},
                                text="", state="proposed", created_at=now)
            s.add(decision)
            s.flush()
        why = refusal(stage, decider(directory.staff(s, decision.decided_by)), facts(s, order))
        claimed = str(run_input.get("decided_by") or decision.decided_by).upper()
        if why is None and claimed != decision.decided_by:
            why_code = "identity_mismatch"
        else:
            why_code = why.code if why else ""
        if why_code:
            decision.state = "refused"
            decision.refusal = why_code
            audit.record(s, actor=decision.decided_by or "unknown", action="decision_refused", order=order,
                         from_status=order.status, channel=channel, at=now,
                         detail={"stage": stage, "why": why_code, "by": "flow"})
            return "refused"
        decision.state = "accepted"
        _apply_decision(s, order, stage, decision, now)
        status = order.status
    if stage == "execution" and status == OrderStatus.FAILED:
        emit_failed(reference)
    return status


def _apply_decision(s: Any, order: Order, stage: str, d: Decision, now: datetime) -> None:
    actor = d.decided_by
    if stage == "callback":
        deadlines.callback_made(s, order, now, actor)
        transition(s, order, _next_after(order, stage), actor=actor, action="callback_recorded", at=now)
    elif stage == "harm_assessment":
        if d.outcome == "do_not_restrict":
            transition(s, order, OrderStatus.REJECTED, actor=actor, action="assessed_no_restriction", at=now)
            mail.queue_confirmations(s, order)
        else:
            order.review_after_days = d.detail.get("review_after_days")
            transition(s, order, _next_after(order, stage), actor=actor, action="assessed", at=now)
    elif stage == "approval":
        if d.outcome == "reject":
            transition(s, order, OrderStatus.REJECTED, actor=actor, action="approval_rejected", at=now)
            mail.queue_confirmations(s, order)
        else:
            transition(s, order, OrderStatus.EXECUTING, actor=actor, action="approved", at=now)
    elif stage == "execution":
        # The account administrator did it in the 1177 tool: record what is in force now, as the simulated
        # registry does, so later orders for the person are checked against it.
        system_reference = str(d.detail.get("system_reference", ""))
        try:
            record_effects(s, order, system_reference, now, strict=False)
        except ExecutionRefused as exc:
            _fail(s, order, actor, exc, now)
            return
        _complete(s, order, actor, system_reference, now)


def _next_after(order: Order, stage: str) -> OrderStatus:
    later = HUMAN_STAGES[HUMAN_STAGES.index(stage) + 1:]
    for st in later:
        if order.stage_plan.get(st, {}).get("required"):
            return STAGE_STATUS[st]
    return OrderStatus.EXECUTING


def _complete(s: Any, order: Order, actor: str, system_reference: str, now: datetime) -> None:
    if order.initiative == "care" and order.order_type in REVIEWED_TYPES:
        days = order.review_after_days or load_regions()[order.region].review_interval_days
        order.review_due_on = now + timedelta(days=days)
    deadlines.meet(s, order.reference, "due", now)
    transition(s, order, OrderStatus.COMPLETED, actor=actor, action="executed", at=now,
               detail={"system_reference": system_reference})
    mail.queue_confirmations(s, order)


def _fail(s: Any, order: Order, actor: str, exc: ExecutionRefused, now: datetime) -> None:
    """The registry refused: the order ends `failed`, and the orderer and the region's support queue are told
    in the same transaction (support handles it from there)."""
    transition(s, order, OrderStatus.FAILED, actor=actor, action="execution_refused", at=now,
               detail={"why": str(exc)[:200]})
    mail.queue_confirmations(s, order)


MANUAL_ROUTE = "execution_manual"


def routed_to_manual(s: Any, order: Order) -> bool:
    """Once an account administrator has been asked to execute the order by hand, the gateway must not
    apply it as well (both could happen at once when the system comes back), so it stays manual."""
    from sqlalchemy import select
    return s.scalar(select(AuditEvent.id).where(AuditEvent.order_reference == order.reference,
                                                AuditEvent.action == MANUAL_ROUTE).limit(1)) is not None


_RETRY_DELAYS = settings().execute_retry_delays


@task(name="execute-order", retries=len(_RETRY_DELAYS), retry_delay_seconds=_RETRY_DELAYS, persist_result=False,
      cache_policy=NO_CACHE)
def execute(reference: str) -> str:
    """Apply the order through the configured gateway. Returns `manual` when a person must do it."""
    gw = gateway()
    with session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.EXECUTING:
            return order.status
        if gw.manual or routed_to_manual(s, order):
            return "manual"
        try:
            system_ref = gw.apply(s, order)
        except ExecutionRefused as exc:
            _fail(s, order, SYSTEM, exc, _now())
        else:
            _complete(s, order, SYSTEM, system_ref, _now())
        status = order.status
    if status == OrderStatus.FAILED:
        emit_failed(reference)  # after the commit: the event never tells of a failure that was rolled back
    return status


def paper_received(order: Order) -> bool:
    """The signed paper form is here: registered by support (tasks/paper_orders.py)."""
    return order.paper_received_on is not None or order.channel == "paper"


@task(name="fall-back-to-paper", persist_result=False, cache_policy=NO_CACHE)
def fall_back_to_paper(reference: str) -> str:
    """The execution system is unreachable. Normally the order moves to `paper_fallback` and the orderer
    prints, signs and sends the paper form. When that signed form has already arrived, another paper round
    would only send the orderer the same request again (and loop for as long as the system is down), so
    the order stays `executing` and is routed to the manual step instead: an account administrator
    performs it in the 1177 administration tool and confirms in the app. Returns `manual` then."""
    with session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.EXECUTING:
            return order.status
        if paper_received(order):
            if not routed_to_manual(s, order):
                audit.record(s, actor=SYSTEM, action=MANUAL_ROUTE, order=order, channel="flow",
                             detail={"why": "gateway_unavailable", "paper_received": True})
            return "manual"
        transition(s, order, OrderStatus.PAPER_FALLBACK, actor=SYSTEM, action="gateway_unavailable")
        return order.status


@task(name="send-confirmations", retries=2, retry_delay_seconds=2, persist_result=False, cache_policy=NO_CACHE)
def confirm(reference: str) -> str:
    """Queue the emails the final status calls for, then try to send them now."""
    with session() as s:
        order = get(s, reference)
        status = OrderStatus(order.status)
        mail.queue_confirmations(s, order)  # normally queued already, with the status
    mail.deliver(reference)
    return status.value


@task(name="publish-timeline", persist_result=False, cache_policy=NO_CACHE)
def publish_timeline(reference: str) -> None:
    """The order's card for the dashboard (tasks/timeline.py): a new version after each step, no personal data."""
    from tasks import timeline
    timeline.publish(reference)


__all__ = ["receive", "stage_state", "record_decision", "execute", "fall_back_to_paper", "confirm",
           "publish_timeline", "GatewayUnavailable", "StageState"]
