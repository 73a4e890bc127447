"""The urgent on-call path: make an order urgent, page on-call, keep the callback clock, make sure the order
run is going. Used by the app (forms/urgent_routes.py), the command line (forms/cli.py) and the Prefect
deployment `urgent-order` (parameter `reference`) that on-call support starts from the dashboard.

The service functions change the orders database first and page before they talk to Prefect, so neither a
Prefect outage nor a worker's polling interval delays the page; the callback deadline is a database row
that the escalation dispatcher (tasks/escalation.py) fires, not a sleeping process.

`python -m flows.urgent` serves the `urgent-order` deployment on its own (the embedded default serves it
from flows/serve.py beside the order flows).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from models.authority import Refusal, refusal
from models.calendar import callback_deadline, is_office_hours
from models.reference import REFERENCE
from models.regions import load_regions
from models.status import FINAL, OrderStatus
from models.tables import Deadline, Decision, Deviation, Order, Staff
from tasks import audit, deadlines, directory, launch, paging
from tasks.database import session
from tasks.escalation import callback_recorded_at, minutes_late
from tasks.orders import Conflict, Forbidden, NotFound, decider, facts, get

log = logging.getLogger(__name__)

TRIGGER_ROLES = ("on_call", "support")
FLOW_ACTOR = "prefect:urgent-order"
# Stages before approval: an order made urgent out of office hours there gets the bakjour as approver.
BEFORE_APPROVAL = (OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL)


def _utcnow() -> datetime:
    return datetime.now(UTC)


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


# --- make urgent --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MadeUrgent:
    reference: str
    changed: bool                 # False: it was urgent already (nothing changed)
    status: str
    callback_due_at: datetime | None


def _retrying(fn: Any, *args: Any) -> Any:
    """Orders carry a version counter: a concurrent change by the order's run makes us read and try again."""
    for attempt in (1, 2, 3):
        try:
            return fn(*args)
        except StaleDataError:
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def make_urgent(reference: str, actor: str, now: datetime, *, check_actor: bool = False) -> MadeUrgent:
    """Make an existing order urgent: callback deadline = now + the region's callback minutes.

    Raises NotFound, Conflict (the order has ended) and, with `check_actor`, Forbidden."""
    return _retrying(_make_urgent, normalise_reference(reference), actor, now, check_actor)  # type: ignore[no-any-return]


def _make_urgent(ref: str, actor: str, now: datetime, check_actor: bool) -> MadeUrgent:
    with session() as s:
        order = get(s, ref)
        if check_actor:
            why = may_trigger(directory.staff(s, actor), order)
            if why:
                raise Forbidden(why)
        if OrderStatus(order.status) in FINAL:
            raise Conflict(f"order is {order.status}")
        if order.urgent and order.callback_due_at is not None:
            return MadeUrgent(ref, False, order.status, order.callback_due_at)
        region = load_regions()[order.region]
        due = callback_deadline(now, region.callback_deadline_minutes)
        order.urgent = True
        order.callback_due_at = due
        order.updated_at = now
        s.add(Deadline(order_reference=ref, kind="callback", due_at=due))
        detail: dict[str, Any] = {"callback_due_at": due.isoformat(), "status": order.status}
        if order.stage_plan and not (order.stage_plan.get("callback") or {}).get("required"):
            # Planned when it was not urgent. The run is past its callback stage (stages follow the status),
            # so the clock runs beside the order's steps; the plan says so for the people reading it.
            order.stage_plan = {**order.stage_plan, "callback": {
                "required": True, "role": "on_call", "rule": "made_urgent",
                "reason": "Gjord brådskande av beredskap eller support: återuppringning inom 30 minuter."}}
            audit.record(s, actor=actor, action="stage_planned", order=order, at=now,
                         detail={"stage": "callback", "required": True, "rule": "made_urgent"})
        approval = dict((order.stage_plan or {}).get("approval") or {})
        pending_approval = any(d.stage == "approval" and d.state == "proposed" for d in order.decisions)
        if (OrderStatus(order.status) in BEFORE_APPROVAL and approval.get("required")
                and approval.get("role") == "head_of_department" and not pending_approval
                and not is_office_hours(now, region.hours)):
            # Urgent out of office hours: the bakjour approves (product decision), as if submitted urgent.
            approval.update(role="bakjour", rule="urgent_out_of_hours_bakjour",
                            reason="Brådskande utanför kontorstid: bakjouren godkänner.")
            order.stage_plan = {**order.stage_plan, "approval": approval}
            audit.record(s, actor=actor, action="stage_planned", order=order, at=now,
                         detail={"stage": "approval", "required": True, "rule": "urgent_out_of_hours_bakjour"})
            detail["approval_role"] = "bakjour"
        audit.record(s, actor=actor, action="made_urgent", order=order, at=now, detail=detail)
        return MadeUrgent(ref, True, order.status, due)


async def ensure_run(reference: str) -> str | None:
    """The order's run exists and is alive (started now if it was never started, restarted if it ended
    while the order is open) and carries the `urgent` tag. None when Prefect cannot be reached: the
    housekeeping reconciler starts it later."""
    run_id = await launch.start_run(reference)
    if not run_id:
        return None
    try:
        from prefect.client.orchestration import get_client
        async with get_client() as client:
            fr = await client.read_flow_run(UUID(run_id))
            if fr.state is not None and fr.state.is_final():
                return await launch.start_run(reference, restart=launch.runs_started(reference)) or run_id
            moved = await launch.move_to_urgent_queue(reference, fr)  # work pools only (production)
            if moved:
                return moved
            if launch.URGENT_TAG not in (fr.tags or []):
                await client.update_flow_run(fr.id, tags=[*(fr.tags or []), launch.URGENT_TAG])
    except Exception as exc:  # the run is there; a tag or a restart can wait for the reconciler
        log.info("could not check the run of %s: %s", reference, type(exc).__name__)
    return run_id


@dataclass(frozen=True)
class UrgentOutcome:
    reference: str
    made_urgent: bool
    status: str
    callback_due_at: datetime | None
    paged: str | None             # on_call | support_queue | None (nothing to page: callback already made)
    page_delivered: bool
    flow_run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["callback_due_at"] = self.callback_due_at.isoformat() if self.callback_due_at else None
        return d


async def start_urgent(reference: str, actor: str, now: datetime | None = None, *,
                       check_actor: bool = False, start_run: bool = True) -> UrgentOutcome:
    """Make the order urgent, page at once, then make sure its run is going (in that order: the page
    never waits for Prefect)."""
    now = now or _utcnow()
    # The database and SMTP work runs in a thread: an app's event loop keeps serving meanwhile.
    made = await asyncio.to_thread(make_urgent, reference, actor, now, check_actor=check_actor)
    page = await asyncio.to_thread(paging.page_order, made.reference, now, actor=actor)
    run_id = await ensure_run(made.reference) if start_run else None
    with session() as s:
        status = get(s, made.reference).status
    return UrgentOutcome(made.reference, made.changed, status, made.callback_due_at,
                         page.target if page else None, bool(page and page.delivered), run_id)


# --- the callback -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallbackOutcome:
    reference: str
    status: str
    recorded_at: datetime
    on_time: bool
    via: Literal["run", "stored"]   # run: handed to the waiting run; stored: the run is past that stage


async def record_callback(reference: str, actor: str, note: str = "", now: datetime | None = None) -> CallbackOutcome:
    """On-call has called the orderer back: stop the clock and let the order continue.

    The moment recorded here is what the escalation dispatcher judges by. An order waiting in its callback
    stage gets the decision through the run (flows.commands.decide); an order whose run has not reached
    the stage yet gets it stored for the run to take; an order made urgent after it had passed that stage
    has its clock stopped directly. Raises NotFound, Conflict, Forbidden."""
    from flows import commands
    now = now or _utcnow()
    ref = normalise_reference(reference)
    with session() as s:
        status = OrderStatus(get(s, ref).status)
    if status == OrderStatus.AWAITING_CALLBACK:
        order = await commands.decide(ref, "callback", actor, {"note": note}, now=now)
        via: Literal["run", "stored"] = "run"
        status_after = order.status
    else:
        status_after = _retrying(_store_callback, ref, actor, note, now)
        via = "stored"
    with session() as s:
        dl = s.scalar(select(Deadline).where(Deadline.order_reference == ref, Deadline.kind == "callback")
                      .order_by(Deadline.due_at.desc()))
    on_time = dl is not None and now <= dl.due_at
    return CallbackOutcome(ref, status_after, now, on_time, via)


def _store_callback(ref: str, actor: str, note: str, now: datetime) -> str:
    with session() as s:
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
            # clock stops now, in this transaction (the dispatcher claims the same row: tasks/escalation.py).
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
            deadlines.callback_made(s, order, now, hsa)
            audit.record(s, actor=actor, action="callback_recorded", order=order, at=now,
                         detail={"stage": "callback", "status": order.status})
        return order.status


# --- the clock ----------------------------------------------------------------------------------------

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


def callback_clock(reference: str, now: datetime) -> CallbackClock:
    ref = normalise_reference(reference)
    with session() as s:
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


# --- the Prefect deployment ---------------------------------------------------------------------------

def _run_name() -> str:
    from prefect.runtime import flow_run
    try:
        return f"urgent-{normalise_reference(str(flow_run.parameters.get('reference', '')))}"
    except ValueError:
        return "urgent-invalid-reference"  # never echo what was typed: it could be a personal number


@task(name="make-urgent", persist_result=False, cache_policy=NO_CACHE)
def make_urgent_task(reference: str) -> dict[str, Any]:
    made = make_urgent(reference, FLOW_ACTOR, _utcnow())
    return {"reference": made.reference, "made_urgent": made.changed, "status": made.status,
            "callback_due_at": made.callback_due_at.isoformat() if made.callback_due_at else None}


@task(name="page-on-call", persist_result=False, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def page_task(reference: str) -> dict[str, Any]:
    page = paging.page_order(reference, _utcnow(), actor=FLOW_ACTOR)
    if page is None:
        return {"paged": None, "delivered": False}
    return {"paged": page.target, "delivered": page.delivered, "new": page.new}


@task(name="ensure-order-run", persist_result=False, cache_policy=NO_CACHE)
async def ensure_run_task(reference: str) -> str | None:
    return await ensure_run(reference)


@flow(name="urgent-order", flow_run_name=_run_name, persist_result=False, log_prints=False,
      description="Gör en befintlig beställning brådskande: återuppringning inom 30 minuter, sök beredskapen, "
                  "se till att beställningens körning går. Parameter: beställningens referens (RO-ÅÅÅÅ-NNNNNN).")
async def urgent_order(reference: str) -> dict[str, Any]:
    ref = normalise_reference(reference)
    try:
        made = make_urgent_task(ref)
    except NotFound:
        raise ValueError("no order with that reference") from None
    page = page_task(ref)
    run_id = await ensure_run_task(ref)
    return {**made, **page, "order_run": run_id}


def serve_urgent() -> None:
    """Serve only the `urgent-order` deployment (the embedded default serves it from flows/serve.py)."""
    from prefect import serve
    from prefect.deployments.runner import RunnerDeployment
    deployment = cast(RunnerDeployment, urgent_order.to_deployment(
        name=urgent_order.name, tags=["restriction-orders", launch.URGENT_TAG]))
    serve(deployment, print_starting_message=False)


if __name__ == "__main__":
    # Through the package, so the served flow is `flows.urgent.urgent_order`, not a copy in `__main__`.
    from flows.urgent import serve_urgent as _serve
    _serve()
