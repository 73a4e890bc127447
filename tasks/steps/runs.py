"""An order's flow run: started, handed decisions, cancelled, replaced; and the reconciler that repairs gaps.

Submitting stores the order first; the run is started after the commit with the order reference as
idempotency key, so a retry can never make a second run. When the engine is down the order keeps
`flow_run_id = NULL` and `reconcile()` starts it once the engine answers again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from models.routine import ORDER_FLOW_NAMES, STAGE_STATUS, Stage
from models.runs import RestartPolicy, RestartVerdict, RunHistory, history_from_audit
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Decision, Order
from tasks.adapters import Adapters, audit
from tasks.adapters.engine import URGENT_QUEUE, NotResumable, RunInfo, tags_for
from tasks.adapters.events import order_resource, run_related
from tasks.steps import confirmations
from tasks.steps.orders import detached, transition

log = logging.getLogger(__name__)
RECONCILER = "system:reconciler"
EXHAUSTED_EVENT = "order.run.restarts-exhausted"
URGENT_QUEUE_REASON = "urgent_queue"  # a run replaced to move it to the urgent queue: not a failure


def _order(ad: Adapters, reference: str) -> Order | None:
    return detached(ad, Order.reference == reference)


async def start_run(ad: Adapters, reference: str, *, restart: int = 0, reason: str = "") -> str | None:
    """Create the order's flow run; returns its id, or None when the engine cannot be reached."""
    order = _order(ad, reference)
    if order is None or OrderStatus(order.status) in FINAL:
        return None
    if order.flow_run_id and not restart:
        return order.flow_run_id
    key = reference if not restart else f"{reference}/restart-{restart}"
    try:
        queue = await ad.engine.work_queue_for(order.flow_name, order.urgent)
        run_id = await ad.engine.create_run(order.flow_name, reference, key=key, work_queue=queue,
                                            tags=tags_for(order.order_type, order.region, order.channel, order.urgent))
    except Exception as exc:  # network errors, API errors: the reconciler will try again
        log.warning("could not start run for %s: %s", reference, type(exc).__name__)
        return None
    _record_run(ad, reference, run_id, restart, reason, queue)
    await ad.engine.begin(run_id)
    return run_id


def _record_run(ad: Adapters, reference: str, run_id: str, restart: int, reason: str, queue: str | None) -> None:
    """The order's run id, with one conditional UPDATE rather than through the order's version counter: the
    run's first step, or the reconciler starting the same run (same idempotency key), may change the order
    between our read and our write, and neither is a conflict with this. Audited once, by whoever set it."""
    with ad.db.session() as s:
        changed = s.execute(update(Order).where(
            Order.reference == reference, or_(Order.flow_run_id.is_(None), Order.flow_run_id != run_id))
            .values(flow_run_id=run_id).execution_options(synchronize_session=False))
        if getattr(changed, "rowcount", 0) == 1:
            row = s.scalar(select(Order).where(Order.reference == reference))
            assert row is not None
            detail: dict[str, Any] = {"flow_run_id": run_id, "restart": restart}
            if reason:
                detail["reason"] = reason
            if queue:
                detail["work_queue"] = queue
            audit.record(s, actor="system", action="run_started", order=row, detail=detail, at=ad.now())


def decision_input(d: Decision) -> dict[str, Any]:
    """The run input that carries a stored decision to the suspended run: its id, nothing else (no free
    text, no identity: the run reads both from the orders database)."""
    return {"decision_id": d.id}


async def resume(ad: Adapters, reference: str, stage: str, run_input: dict[str, Any]) -> bool:
    """Hand a decision to the suspended run. False when the run was not waiting (it will pick the
    stored decision up itself when it reaches the stage, or the reconciler resumes it)."""
    order = _order(ad, reference)
    run_id = order.flow_run_id if order else None
    if not run_id:
        return False
    try:
        return await ad.engine.resume(run_id, run_input)
    except NotResumable as exc:
        # Seen when the process died in the middle of suspending: the decision is in the orders database, so
        # that run ends and the order's next one takes it.
        log.warning("run of %s cannot be resumed (%s); replacing it", reference, exc)
        try:
            await ad.engine.set_state(run_id, "crashed", "Could not be resumed.")
            return await start_run(ad, reference, restart=runs_started(ad, reference)) is not None
        except Exception as inner:
            log.info("replacing the run of %s not done now: %s", reference, type(inner).__name__)
            return False
    except Exception as exc:  # the engine is down: the reconciler resumes it later
        log.info("resume of %s/%s not done now: %s", reference, stage, type(exc).__name__)
        return False


async def move_to_urgent_queue(ad: Adapters, reference: str, run: RunInfo) -> str | None:
    """An order made urgent after its run was created: that run waits in the deployment's own queue, behind
    ordinary work, and Prefect cannot move a flow run to another queue. So a run that is not executing
    (suspended in a human step, or scheduled) is replaced by one in the urgent queue, which continues from
    the orders database. Returns the new run's id; None when there is nothing to move: a served deployment
    (no queues), a run already in the urgent queue, or one executing now (it finishes its step first)."""
    if run.work_queue_name == URGENT_QUEUE or not (run.paused or run.scheduled):
        return None
    order = _order(ad, reference)
    if order is None or order.flow_run_id != run.id or OrderStatus(order.status) in FINAL:
        return None
    if await ad.engine.work_queue_for(order.flow_name, True) is None:
        return None
    await ad.engine.set_state(run.id, "cancelled", "Replaced by a run in the urgent queue.")
    return await start_run(ad, reference, restart=runs_started(ad, reference), reason=URGENT_QUEUE_REASON)


async def cancel_run(ad: Adapters, reference: str) -> bool:
    """Stop the order's run (it is usually suspended, so no process is interrupted). False when the engine
    could not be told (or the order has no run)."""
    order = _order(ad, reference)
    run_id = order.flow_run_id if order else None
    if not run_id:
        return False
    try:
        await ad.engine.set_state(run_id, "cancelled", "order cancelled")
    except Exception as exc:  # the run then ends by itself: its next step sees the cancelled order
        log.info("cancel of run for %s not done now: %s", reference, type(exc).__name__)
        return False
    return True


def runs_started(ad: Adapters, reference: str) -> int:
    """How many runs the order has had: the next restart's number, which makes its idempotency key."""
    with ad.db.session() as s:
        return len(list(s.scalars(select(AuditEvent.id).where(AuditEvent.order_reference == reference,
                                                               AuditEvent.action == "run_started"))))


# --- the reconciler -------------------------------------------------------------------------------------

@dataclass
class LivenessWindow:
    """Where the reconciler's liveness check stands, per process that runs it in a loop. Each check reads one
    window of open orders' runs, so the work stays the same with ten or ten thousand orders waiting; a
    fresh window checks at once, from the first order."""
    after: int = 0                   # the next window starts after this order id
    next_check: float = 0.0          # time.monotonic() when the next check is due


@dataclass
class Gaps:
    """What the reconciler found in one look at the orders database."""
    no_run: list[str]
    proposed: dict[str, tuple[str, dict[str, Any]]]   # reference -> (stage, run input)
    with_run: dict[str, str]                          # reference -> run id


def _open() -> Any:
    return Order.status.not_in([str(x) for x in FINAL] + [OrderStatus.PAPER_FALLBACK.value])


def _find_gaps(ad: Adapters, limit: int, window: LivenessWindow, check_liveness: bool) -> Gaps:
    with ad.db.session() as s:
        no_run = list(s.scalars(select(Order.reference).where(_open(), Order.flow_run_id.is_(None))
                                .order_by(Order.id).limit(limit)))
        waiting = s.execute(select(Order.reference, Order.status, Order.flow_run_id, Decision)
                            .join(Decision, Decision.order_id == Order.id)
                            .where(_open(), Order.flow_run_id.is_not(None), Decision.state == "proposed")
                            .order_by(Decision.id).limit(limit)).all()
        proposed = {ref: (d.stage, decision_input(d)) for ref, status, _, d in waiting
                    if STAGE_STATUS.get(Stage(d.stage)) == status}
        with_run = {ref: str(run) for ref, _, run, _ in waiting if ref in proposed}
        rows = s.execute(select(Order.id, Order.reference, Order.flow_run_id)
                         .where(_open(), Order.flow_run_id.is_not(None), Order.id > window.after)
                         .order_by(Order.id).limit(limit)).all() if check_liveness else []
    if check_liveness:
        window.after = rows[-1].id if len(rows) == limit else 0
        window.next_check = time.monotonic() + ad.settings.run_liveness_seconds
    with_run |= {row.reference: str(row.flow_run_id) for row in rows}
    return Gaps(no_run, proposed, with_run)


async def reconcile(ad: Adapters, limit: int = 200, now: datetime | None = None,
                    window: LivenessWindow | None = None) -> dict[str, int]:
    """Repair the gaps between the orders database and the engine. Safe to run any time, from any process:
    start runs that were never started, hand stored decisions to suspended runs, and start a new run
    for an open order whose run ended (crashed, or a suspension that expired), with backoff and a cap
    (models/runs.py): an order whose runs keep failing is set to `failed` instead.

    Orders without a run and decisions waiting to be handed over are looked for among all open orders, every
    round; whether runs are still alive is checked every `run_liveness_seconds` (and in a window's first
    round), for a window of `limit` orders that moves on each time."""
    now = now or ad.now()
    window = window or LivenessWindow()
    counts = {"started": 0, "resumed": 0, "restarted": 0, "failed": 0}
    gaps = _find_gaps(ad, limit, window, time.monotonic() >= window.next_check)
    for ref in gaps.no_run:
        if not await start_run(ad, ref):
            return counts  # the order is open and has no run, so the engine did not answer: next round
        counts["started"] += 1
    if not gaps.with_run:
        return counts
    try:
        runs = await ad.engine.read_runs(sorted(set(gaps.with_run.values())))
    except Exception:
        return counts
    for ref, run_id in gaps.with_run.items():
        run = runs.get(run_id)
        if run is not None:
            await _repair(ad, ref, run, gaps, now, counts)
    return counts


async def _repair(ad: Adapters, ref: str, run: RunInfo, gaps: Gaps, now: datetime, counts: dict[str, int]) -> None:
    if run.paused and ref in gaps.proposed:
        if await resume(ad, ref, *gaps.proposed[ref]):
            counts["resumed"] += 1
    elif run.final:
        verdict = restart_policy(ad).verdict(history_from_audit(_run_audit(ad, ref)), now)
        if verdict == RestartVerdict.GIVE_UP:
            if give_up(ad, ref, run.id, now):
                counts["failed"] += 1
        elif verdict == RestartVerdict.RESTART and await start_run(ad, ref, restart=runs_started(ad, ref)):
            counts["restarted"] += 1


def restart_policy(ad: Adapters) -> RestartPolicy:
    return RestartPolicy(max_restarts=ad.settings.run_restarts_max,
                         first_delay=timedelta(seconds=ad.settings.run_restart_delay_seconds))


def _run_audit(ad: Adapters, reference: str) -> list[tuple[str, str | None, datetime, dict[str, Any] | None]]:
    with ad.db.session() as s:
        rows = s.execute(select(AuditEvent.action, AuditEvent.to_status, AuditEvent.at, AuditEvent.detail)
                         .where(AuditEvent.order_reference == reference)
                         .where((AuditEvent.action == "run_started") | AuditEvent.to_status.is_not(None))
                         .order_by(AuditEvent.id)).all()
    return [(r.action, r.to_status, r.at, r.detail) for r in rows]


def run_history(ad: Adapters, reference: str) -> RunHistory:
    return history_from_audit(_run_audit(ad, reference))


def give_up(ad: Adapters, reference: str, run_id: str, now: datetime) -> bool:
    """Its runs kept failing: the order ends as `failed` and the people it concerns are told (the emails
    are queued in the same transaction). True when this call made the change."""
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        if order is None or OrderStatus(order.status) in FINAL or order.status == OrderStatus.PAPER_FALLBACK:
            return False
        history = history_from_audit(_run_audit(ad, reference))
        transition(s, order, OrderStatus.FAILED, actor=RECONCILER, action="run_restarts_exhausted", at=now,
                   detail={"restarts": history.restarts_since_progress, "flow_run_id": run_id})
        confirmations.queue(ad, s, order)
    log.error("runs of %s failed %d times in a row: order set to failed", reference,
              history.restarts_since_progress + 1)
    ad.mail.deliver(reference)
    ad.events.emit(EXHAUSTED_EVENT, order_resource(reference), payload={"restarts": history.restarts_since_progress},
                   related=run_related(run_id), occurred=now)
    return True


# --- runs nobody executes, decisions that do not move ---------------------------------------------------

STUCK_ACTION = "run_stuck_crashed"
STALLED_ACTION = "decision_stalled"
STALLED_EVENT = "order.decision.stalled"


async def crash_stuck(ad: Adapters) -> int:
    """End Crashed the order runs claimed but never started, or lost with their worker (tasks/adapters/
    stuck_runs.py), and note each on its order's audit trail (what /healthz counts); the reconciler's
    liveness check then starts the order's next run. 0 on an engine without workers (in-process)."""
    crash = getattr(ad.engine, "crash_stuck", None)
    if crash is None:
        return 0
    crashed = await crash([*ORDER_FLOW_NAMES, "urgent-order"], ad.settings.stuck_run_seconds)
    for name, run_id, reason in crashed:
        with ad.db.session() as s:
            order = s.scalar(select(Order).where(Order.reference == name))
            if order is not None and order.flow_run_id == run_id:
                audit.record(s, actor=RECONCILER, action=STUCK_ACTION, order=order,
                             detail={"flow_run_id": run_id, "reason": reason[:200]}, at=ad.now())
    return len(crashed)


def stuck_runs_crashed_since(ad: Adapters, since: datetime) -> int:
    with ad.db.session() as s:
        return len(list(s.scalars(select(AuditEvent.id).where(AuditEvent.action == STUCK_ACTION,
                                                               AuditEvent.at >= since))))


@dataclass(frozen=True)
class StalledDecision:
    reference: str
    decision_id: int
    stage: str
    waited_seconds: float


def stalled_decisions(ad: Adapters, now: datetime | None = None, limit: int = 200) -> list[StalledDecision]:
    """Stored decisions the order still waits on (its status is the decision's stage) older than
    `stalled_decision_seconds`: the reconciler hands a decision over within seconds, so one this old means
    the order's run is not moving (nobody executes it, or the engine refuses it)."""
    now = now or ad.now()
    cutoff = now - timedelta(seconds=ad.settings.stalled_decision_seconds)
    with ad.db.session() as s:
        rows = s.execute(select(Order.reference, Order.status, Decision.id, Decision.stage, Decision.created_at)
                         .join(Decision, Decision.order_id == Order.id)
                         .where(_open(), Decision.state == "proposed", Decision.created_at < cutoff)
                         .order_by(Decision.id).limit(limit)).all()
    out = []
    for r in rows:
        if STAGE_STATUS.get(Stage(r.stage)) != r.status:
            continue
        created = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
        out.append(StalledDecision(r.reference, r.id, r.stage, (now - created).total_seconds()))
    return out


def report_stalled(ad: Adapters, now: datetime | None = None) -> int:
    """Each stalled decision once: an audit row on the order and the event `order.decision.stalled` (the
    shipped automation "Stored decision not moving" fires on it). Returns how many were new."""
    now = now or ad.now()
    stalled = stalled_decisions(ad, now)
    if not stalled:
        return 0
    new = 0
    with ad.db.session() as s:
        told = {int((e.detail or {}).get("decision_id", 0)) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.action == STALLED_ACTION,
                                     AuditEvent.order_reference.in_([x.reference for x in stalled])))}
        for x in stalled:
            if x.decision_id in told:
                continue
            order = s.scalar(select(Order).where(Order.reference == x.reference))
            if order is None:
                continue
            audit.record(s, actor=RECONCILER, action=STALLED_ACTION, order=order, at=now,
                         detail={"decision_id": x.decision_id, "stage": x.stage, "waited_s": round(x.waited_seconds)})
            new += 1
            log.warning("decision %d of %s (%s) has not moved the order for %.0f s", x.decision_id, x.reference,
                        x.stage, x.waited_seconds)
            ad.events.emit(STALLED_EVENT, order_resource(x.reference),
                           payload={"stage": x.stage, "waited_seconds": round(x.waited_seconds)},
                           related=run_related(order.flow_run_id), occurred=now)
    return new
