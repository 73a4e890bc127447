"""Urgency against the orders database: make an order urgent (callback clock, re-planned stages), record a
callback outside the order's callback stage, read the callback clock. The urgent path's orchestration and
its Prefect deployment are flows/urgent.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from models.authority import Refusal, refusal
from models.calendar import callback_deadline, urgent_due_at
from models.reference import REFERENCE
from models.routine import STAGES, Stage, StagePlan, replan_urgent
from models.sla import minutes_late
from models.status import FINAL, OrderStatus
from models.tables import Deadline, Decision, Deviation, Order, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.steps import deadlines
from tasks.steps.escalation import callback_recorded_at
from tasks.steps.orders import Conflict, Forbidden, decider, facts, get

# Who may make an order urgent: the people who call the orderer back (the callback stage's deciders).
TRIGGER_ROLES = STAGES[Stage.CALLBACK].roles


def normalise_reference(reference: str) -> str:
    """The reference in its stored form; ValueError (without echoing the input: it may be anything a person
    typed, a personal number even) when it is not shaped like one."""
    ref = str(reference).strip().upper()
    if not REFERENCE.fullmatch(ref):
        raise ValueError("the reference must look like RO-YYYY-NNNNNN")
    return ref


def may_trigger(person: Staff | None, order: Order) -> Refusal | None:
    """On-call support and support of the order's region (or of no region) may make it urgent."""
    if person is None:
        return Refusal("not_found", "Personen finns inte i personalkatalogen.")
    if not directory.has_role(person, *TRIGGER_ROLES):
        return Refusal("wrong_role", "Endast beredskap eller support kan göra en beställning brådskande.")
    if person.region not in (None, order.region):
        return Refusal("other_region", "Ärendet tillhör en annan region.")
    return None



# --- make urgent ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MadeUrgent:
    reference: str
    changed: bool                 # False: it was urgent already (nothing changed)
    status: str
    callback_due_at: datetime | None


def retrying(fn: Any, *args: Any) -> Any:
    """Orders carry a version counter: a concurrent change by the order's run makes us read and try again."""
    for attempt in (1, 2, 3):
        try:
            return fn(*args)
        except StaleDataError:
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def make_urgent(ad: Adapters, reference: str, actor: str, now: datetime, *,
                check_actor: bool = False) -> MadeUrgent:
    """Make an existing order urgent: callback deadline = now + the region's callback minutes.

    Raises NotFound, Conflict (the order has ended) and, with `check_actor`, Forbidden."""
    return retrying(_make_urgent, ad, normalise_reference(reference), actor, now, check_actor)  # type: ignore[no-any-return]


def _make_urgent(ad: Adapters, ref: str, actor: str, now: datetime, check_actor: bool) -> MadeUrgent:
    with ad.db.session() as s:
        order = get(s, ref)
        if check_actor:
            why = may_trigger(directory.staff(s, actor), order)
            if why:
                raise Forbidden(why)
        if OrderStatus(order.status) in FINAL:
            raise Conflict(f"order is {order.status}")
        if order.urgent and order.callback_due_at is not None:
            return MadeUrgent(ref, False, order.status, order.callback_due_at)
        region = ad.region(order.region)
        due = callback_deadline(now, region.callback_deadline_minutes)
        order.urgent = True
        order.callback_due_at = due
        order.updated_at = now
        s.add(Deadline(order_reference=ref, kind="callback", due_at=due))
        # Urgent from now on: done within the region's target of this moment, unless it was due earlier.
        target = urgent_due_at(now, region.urgent_target_hours)
        if order.due_at is None or order.due_at > target:
            deadlines.set_due(s, order, target, actor, now, "made_urgent")
        detail: dict[str, Any] = {"callback_due_at": due.isoformat(), "status": order.status}
        pending_approval = any(d.stage == "approval" and d.state == "proposed" for d in order.decisions)
        re = replan_urgent(StagePlan.from_json(order.stage_plan), OrderStatus(order.status), at=now,
                           hours=region.hours, callback_minutes=region.promised_callback_minutes,
                           approval_pending=pending_approval)
        if re.changed:
            order.stage_plan = {**order.stage_plan, **re.plan.as_json()}
            for stage in re.changed:
                p = re.plan.stages[stage]
                audit.record(s, actor=actor, action="stage_planned", order=order, at=now,
                             detail={"stage": stage.value, "required": p.required, "rule": p.rule})
            if Stage.APPROVAL in re.changed:
                detail["approval_role"] = re.plan.role(Stage.APPROVAL)
        audit.record(s, actor=actor, action="made_urgent", order=order, at=now, detail=detail)
        return MadeUrgent(ref, True, order.status, due)



# --- the callback ----------------------------------------------------------------------------------

def store_callback(ad: Adapters, ref: str, actor: str, note: str, now: datetime) -> str:
    """A callback recorded outside the order's callback stage (its run has not received it yet, or it was
    made urgent after it passed that stage). Raises Forbidden, Conflict."""
    with ad.db.session() as s:
        order = get(s, ref)
        status = OrderStatus(order.status)
        person = directory.staff(s, actor)
        why = refusal("callback", decider(person), facts(s, order))
        if why:
            audit.record(s, actor=actor, action="decision_refused", order=order, from_status=order.status,
                         detail={"stage": "callback", "why": why.code, "by": "app"}, at=now)
            s.commit()
            raise Forbidden(why)
        open_clock = s.scalar(select(Deadline.id).where(Deadline.order_reference == ref, Deadline.kind == "callback",
                                                        Deadline.met_at.is_(None)))
        if status in FINAL or open_clock is None or order.callback_at is not None:
            raise Conflict(f"order {order.status} waits for no callback")
        if any(d.stage == "callback" and d.state == "proposed" for d in order.decisions):
            raise Conflict("a callback is already being processed")
        hsa = person.hsa_id if person else actor
        if status == OrderStatus.SUBMITTED:
            # The run has not received the order yet: it takes this decision when it reaches the stage. The
            # clock stops now, in this transaction (the dispatcher claims the same row: tasks/steps/escalation.py).
            deadlines.meet(s, ref, "callback", now)
            d = Decision(order_id=order.id, stage="callback", decided_by=hsa, outcome="done", detail={}, text=note,
                         state="proposed", created_at=now)
            s.add(d)
            s.flush()
            audit.record(s, actor=actor, action="decision_proposed", order=order, from_status=order.status,
                         detail={"stage": "callback", "outcome": "done", "decision_id": d.id}, at=now)
        else:
            # Made urgent after the run passed its callback stage: only the clock is stopped.
            d = Decision(order_id=order.id, stage="callback", decided_by=hsa, outcome="done", detail={}, text=note,
                         state="accepted", created_at=now)
            s.add(d)
            deadlines.callback_made(ad, s, order, now, hsa)
            audit.record(s, actor=actor, action="callback_recorded", order=order, at=now,
                         detail={"stage": "callback", "status": order.status})
        return order.status



# --- the clock -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallbackClock:
    reference: str
    urgent: bool
    state: Literal["none", "running", "met", "missed"]
    callback_due_at: datetime | None
    seconds_left: int | None      # while running; 0 once due; None without a clock
    recorded_at: datetime | None  # when the callback was recorded (also when late)
    escalated_at: datetime | None
    minutes_late: int | None      # of the escalation (the deviation)


def callback_clock(ad: Adapters, reference: str, now: datetime) -> CallbackClock:
    ref = normalise_reference(reference)
    with ad.db.session() as s:
        order = get(s, ref)
        dl = s.scalar(select(Deadline).where(Deadline.order_reference == ref, Deadline.kind == "callback")
                      .order_by(Deadline.due_at.desc()))
        if dl is None:
            return CallbackClock(ref, order.urgent, "none", None, None, None, None, None)
        recorded = callback_recorded_at(s, order)
        late = s.scalar(select(Deviation.minutes_late).where(Deviation.order_reference == ref,
                                                             Deviation.kind == "callback_missed")
                        .order_by(Deviation.id))
    state: Literal["none", "running", "met", "missed"]
    if recorded is not None and recorded <= dl.due_at:
        state = "met"
    elif dl.fired_at is not None or now >= dl.due_at:
        state = "missed"
    elif OrderStatus(order.status) in FINAL:
        state = "none"
    else:
        state = "running"
    left = max(0, math.ceil((dl.due_at - now).total_seconds())) if state == "running" else 0
    if late is None and state == "missed" and dl.fired_at is not None:
        late = minutes_late(dl.due_at, dl.fired_at)
    return CallbackClock(ref, order.urgent, state, dl.due_at, left, recorded, dl.fired_at, late)


