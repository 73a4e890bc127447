"""The routine's steps against the orders database. Every one is idempotent.

A suspended flow run re-runs from the top when it is resumed, so each step first looks at the order's
state and does nothing that is already done. Results are references and statuses only: the orders
database, not Prefect's result store, is what makes a re-run safe, on whichever machine it lands.

These are plain functions of the adapters; `flows/order.py` runs the meaningful ones as Prefect task runs
(receive, record the decision, execute, fall back to paper, confirm) and calls the reads directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.authority import refusal
from models.routine import (
    ORDER_TYPES,
    STAGE_STATUS,
    PlanFacts,
    Stage,
    StagePlan,
    decision_leads_to,
    first_status,
    plan,
)
from models.rules import check_order
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Decision, Order
from tasks.adapters import Adapters, audit, directory, timeline
from tasks.adapters.events import order_resource, stable_id
from tasks.adapters.gateway import ExecutionRefused, GatewayUnavailable, record_effects
from tasks.steps import confirmations, deadlines
from tasks.steps.orders import decider, facts, get, rule_context, stored_request, transition

log = logging.getLogger(__name__)
SYSTEM = "system"
FAILED_EVENT = "order.failed"
MANUAL_ROUTE = "execution_manual"
# The channel a resume that did not come from the app is audited with (a Prefect UI or API call).
PREFECT_CHANNEL = "prefect"


def emit_failed(ad: Adapters, reference: str) -> None:
    """Tell Prefect an order could not be executed (event `order.failed`, the reference only). Never raises:
    the email to support, queued with the status, is what makes sure somebody acts."""
    ad.events.emit(FAILED_EVENT, order_resource(reference, **{"order.reference": reference}),
                   id=stable_id(FAILED_EVENT, reference))


# --- receive --------------------------------------------------------------------------------------------

def receive(ad: Adapters, reference: str) -> str:
    """Check the stored order again, now (its run may start late: the reconciler, a paper order registered
    days after it was signed), then plan the stages (each one required or not, with the rule that said so)
    and open the first."""
    now = ad.now()
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status not in (OrderStatus.SUBMITTED, OrderStatus.PAPER_FALLBACK):
            return order.status
        if order.status == OrderStatus.SUBMITTED and not _still_valid(ad, s, order, now):
            return order.status
        if not order.stage_plan:
            region = ad.region(order.region)
            planned = plan(PlanFacts(order.order_type, order.initiative, order.urgent), at=order.created_at,
                           hours=region.hours, callback_minutes=region.promised_callback_minutes)
            order.stage_plan = planned.as_json()
            for stage, p in planned.stages.items():
                audit.record(s, actor=SYSTEM, action="stage_planned", order=order, at=now,
                             detail={"stage": stage.value, "required": p.required, "rule": p.rule})
        if order.status == OrderStatus.SUBMITTED:
            transition(s, order, first_status(StagePlan.from_json(order.stage_plan)), actor=SYSTEM,
                       action="received", at=now)
        return order.status


def _still_valid(ad: Adapters, s: Session, order: Order, now: datetime) -> bool:
    """The rules on the stored order at `now`: a child may have turned 16, a restriction may have been lifted
    since it was submitted. Rejected (and the orderer told) when it no longer holds."""
    raw = stored_request(order)
    result = check_order(raw, rule_context(ad, s, raw, now, SYSTEM, "revalidate"))
    if result.ok:
        audit.record(s, actor=SYSTEM, action="validated", order=order, at=now,
                     detail={"warnings": [w.code for w in result.warnings]})
        return True
    transition(s, order, OrderStatus.REJECTED, actor=SYSTEM, action="validation_failed", at=now,
               detail={"codes": sorted({e.code for e in result.errors})})
    confirmations.queue(ad, s, order, extra={"why": "validation_failed"})
    return False


# --- human stages ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageState:
    state: str            # done | waiting | closed
    attempt: int = 0      # how many decisions were refused: the suspend key's counter
    proposed: int | None = None


def stage_state(ad: Adapters, reference: str, stage: str) -> StageState:
    with ad.db.session() as s:
        order = get(s, reference)
        if OrderStatus(order.status) in FINAL or order.status == OrderStatus.PAPER_FALLBACK:
            return StageState("closed")
        if order.status != STAGE_STATUS[Stage(stage)]:
            return StageState("done")
        refused = sum(1 for d in order.decisions if d.stage == stage and d.state == "refused")
        proposed = next((d.id for d in order.decisions if d.stage == stage and d.state == "proposed"), None)
        return StageState("waiting", refused, proposed)


def record_decision(ad: Adapters, reference: str, stage: str, decision_id: int | None) -> str:
    """Accept the decision the app stored (under the identity the app verified), after checking the decider
    against the staff directory again; anything else is refused and audited, and the order keeps waiting.

    Only a decision the app stored as `proposed` for this order and stage counts: a resume typed into the
    Prefect UI or sent to Prefect's API carries no such decision (or one that is not this stage's), so it
    changes nothing however it names the decider."""
    now = ad.now()
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status != STAGE_STATUS[Stage(stage)]:
            return "stale"
        d = s.get(Decision, int(decision_id)) if decision_id is not None else None
        if d is None or d.order_id != order.id or d.stage != stage or d.state != "proposed":
            _refuse_foreign(s, order, stage, now)
            return "refused"
        why = refusal(stage, decider(directory.staff(s, d.decided_by)), facts(s, order))
        if why is not None:
            d.state, d.refusal = "refused", why.code
            audit.record(s, actor=d.decided_by or "unknown", action="decision_refused", order=order,
                         from_status=order.status, channel="flow", at=now,
                         detail={"stage": stage, "why": why.code, "by": "flow"})
            return "refused"
        d.state = "accepted"
        _apply_decision(ad, s, order, Stage(stage), d, now)
        status = order.status
    if status == OrderStatus.FAILED:
        emit_failed(ad, reference)
    return status


def _refuse_foreign(s: Session, order: Order, stage: str, now: datetime) -> None:
    """A resume that did not come from the app. A refused decision row keeps the suspension key counter
    right (the run waits again under a fresh key); nobody is blamed: the identity in it is unverified."""
    s.add(Decision(order_id=order.id, stage=stage, decided_by="", outcome="", detail={}, text="",
                   state="refused", refusal="not_from_app", created_at=now))
    audit.record(s, actor="unknown", action="decision_refused", order=order, from_status=order.status,
                 channel=PREFECT_CHANNEL, at=now, detail={"stage": stage, "why": "not_from_app", "by": "flow"})


def _apply_decision(ad: Adapters, s: Session, order: Order, stage: Stage, d: Decision, now: datetime) -> None:
    action, to = decision_leads_to(StagePlan.from_json(order.stage_plan), stage, d.outcome)
    if stage == Stage.EXECUTION:
        # The account administrator did it in the 1177 tool: record what is in force now, as the simulated
        # registry does, so later orders for the person are checked against it.
        system_reference = str(d.detail.get("system_reference", ""))
        try:
            record_effects(s, order, system_reference, now, strict=False)
        except ExecutionRefused as exc:
            _fail(ad, s, order, d.decided_by, exc, now)
            return
        _complete(ad, s, order, d.decided_by, system_reference, now)
        return
    if stage == Stage.CALLBACK:
        deadlines.callback_made(ad, s, order, now, d.decided_by)
    if stage == Stage.HARM_ASSESSMENT and d.outcome == "restrict":
        order.review_after_days = d.detail.get("review_after_days")
    transition(s, order, to, actor=d.decided_by, action=action, at=now)
    confirmations.queue(ad, s, order)  # none while the order is open


def _complete(ad: Adapters, s: Session, order: Order, actor: str, system_reference: str, now: datetime) -> None:
    if order.initiative == "care" and ORDER_TYPES[order.order_type].reviewed:
        days = order.review_after_days or ad.region(order.region).review_interval_days
        order.review_due_on = now + timedelta(days=days)
    deadlines.meet(s, order.reference, "due", now)
    transition(s, order, OrderStatus.COMPLETED, actor=actor, action="executed", at=now,
               detail={"system_reference": system_reference})
    confirmations.queue(ad, s, order)


def _fail(ad: Adapters, s: Session, order: Order, actor: str, exc: ExecutionRefused, now: datetime) -> None:
    """The registry refused: the order ends `failed`, and the orderer and the region's support queue are told
    in the same transaction (support handles it from there)."""
    transition(s, order, OrderStatus.FAILED, actor=actor, action="execution_refused", at=now,
               detail={"why": str(exc)[:200]})
    confirmations.queue(ad, s, order)


# --- execution ------------------------------------------------------------------------------------------

def routed_to_manual(s: Session, order: Order) -> bool:
    """Once an account administrator has been asked to execute the order by hand, the gateway must not
    apply it as well (both could happen at once when the system comes back), so it stays manual."""
    return s.scalar(select(AuditEvent.id).where(AuditEvent.order_reference == order.reference,
                                                AuditEvent.action == MANUAL_ROUTE).limit(1)) is not None


def execute(ad: Adapters, reference: str) -> str:
    """Apply the order through the configured gateway. Returns `manual` when a person must do it; raises
    GatewayUnavailable when the execution system cannot be reached (the flow retries, then falls back)."""
    gw = ad.gateway.current()
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.EXECUTING:
            return order.status
        if gw.manual or routed_to_manual(s, order):
            return "manual"
        now = ad.now()
        try:
            system_ref = gw.apply(s, order, now)
        except ExecutionRefused as exc:
            _fail(ad, s, order, SYSTEM, exc, now)
        else:
            _complete(ad, s, order, SYSTEM, system_ref, now)
        status = order.status
    if status == OrderStatus.FAILED:
        emit_failed(ad, reference)  # after the commit: the event never tells of a failure that was rolled back
    return status


def paper_received(order: Order) -> bool:
    """The signed paper form is here: registered by support (tasks/steps/paper_orders.py)."""
    return order.paper_received_on is not None or order.channel == "paper"


def fall_back_to_paper(ad: Adapters, reference: str) -> str:
    """The execution system is unreachable. Normally the order moves to `paper_fallback` and the orderer
    prints, signs and sends the paper form. When that signed form has already arrived, another paper round
    would only send the orderer the same request again (and loop for as long as the system is down), so
    the order stays `executing` and is routed to the manual step instead: an account administrator
    performs it in the 1177 administration tool and confirms in the app. Returns `manual` then."""
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.EXECUTING:
            return order.status
        if paper_received(order):
            if not routed_to_manual(s, order):
                audit.record(s, actor=SYSTEM, action=MANUAL_ROUTE, order=order, channel="flow", at=ad.now(),
                             detail={"why": "gateway_unavailable", "paper_received": True})
            return "manual"
        transition(s, order, OrderStatus.PAPER_FALLBACK, actor=SYSTEM, action="gateway_unavailable", at=ad.now())
        return order.status


# --- confirmation ---------------------------------------------------------------------------------------

def confirm(ad: Adapters, reference: str) -> str:
    """Queue the emails the final status calls for, then try to send them now."""
    with ad.db.session() as s:
        order = get(s, reference)
        status = OrderStatus(order.status)
        confirmations.queue(ad, s, order)  # normally queued already, with the status
    ad.mail.deliver(reference)
    return status.value


def publish_timeline(ad: Adapters, reference: str) -> None:
    """The order's card for the dashboard (tasks/adapters/timeline.py): a new version after each step."""
    timeline.publish(ad, reference)


__all__ = ["GatewayUnavailable", "StageState", "confirm", "execute", "fall_back_to_paper", "publish_timeline",
           "receive", "record_decision", "stage_state"]
