"""Starting and resuming order runs on the Prefect server, and the reconciler that repairs what failed.

Submitting stores the order first; the run is started after the commit with the order reference as
idempotency key, so a retry can never make a second run. When the Prefect API is down the order keeps
`flow_run_id = NULL` and `reconcile()` starts it once the API answers again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import PrefectException
from prefect.flow_runs import aresume_flow_run
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from models.runs import RestartPolicy, RestartVerdict, history_from_audit
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Decision, Order
from tasks import audit, mail
from tasks.database import session
from tasks.orders import STAGE_STATUS, transition
from tasks.settings import settings

log = logging.getLogger(__name__)
URGENT_TAG = "urgent"
RECONCILER = "system:reconciler"
EXHAUSTED_EVENT = "order.run.restarts-exhausted"
# prefect.yaml's queue for urgent work in the `restriction-orders` work pool (created with priority 1,
# README "Production layout"); the order flows' own queue is `orders`.
URGENT_QUEUE = "urgent"
URGENT_QUEUE_REASON = "urgent_queue"  # a run replaced to move it to the urgent queue: not a failure


_fail_fast: dict[float, tuple[Any, Any]] = {}


@contextmanager
def prefect_fails_fast(timeout: float = 10.0) -> Iterator[None]:
    """One try per request and a short timeout: for calls a person waits on, and for background loops (the
    reconciler), so a down or hanging Prefect API costs seconds instead of minutes of retries with backoff;
    the next round, or the reconciler, tries again. Prefect reads these settings per request, from this
    context (one thread, or the asyncio tasks started inside it).

    This is `prefect.settings.temporary_settings`, with the changed settings made once: building Prefect's
    settings reads the whole environment again, and per submit that was a third of the app's CPU under load
    (bench/bench_submit_load.py)."""
    import prefect.context
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES
    current = prefect.context.get_settings_context()
    cached = _fail_fast.get(timeout)
    if cached is None or cached[0] is not current.settings:
        cached = (current.settings, current.settings.copy_with_update(
            updates={PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: timeout}))
        _fail_fast[timeout] = cached
    with prefect.context.SettingsContext(profile=current.profile, settings=cached[1]):
        yield


@lru_cache(maxsize=4)
def _tls(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def prefect_client() -> PrefectClient:
    """Prefect's client, with its TLS context made once per process: Prefect makes a new one per client,
    which was a fifth of the app's CPU per submit under load. Same certificate settings as Prefect's own."""
    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY
    insecure = bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
    cafile = None if insecure else (PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
    return get_client(httpx_settings={"verify": _tls(cafile, insecure)})


def deployment_name(flow_name: str) -> str:
    return f"{flow_name}/{flow_name}"


def tags(order: Order) -> list[str]:
    out = [f"type:{order.order_type}", f"region:{order.region}", f"channel:{order.channel}"]
    if order.urgent:
        out.append(URGENT_TAG)
    return out


_pool_of: dict[str, tuple[float, str | None]] = {}
POOL_CACHE_S = 60.0


async def work_pool_of(deployment: str) -> str | None:
    """The deployment's work pool; None for a served deployment (the embedded default has no pool).
    Remembered for a minute: deployments change when someone deploys, not per order."""
    hit = _pool_of.get(deployment)
    if hit is not None and time.monotonic() - hit[0] < POOL_CACHE_S:
        return hit[1]
    async with prefect_client() as client:
        dep = await client.read_deployment_by_name(deployment)
    _pool_of[deployment] = (time.monotonic(), dep.work_pool_name)
    return dep.work_pool_name


async def work_queue_for(deployment: str, urgent: bool) -> str | None:
    """The urgent queue for an urgent order's run on a work-pool deployment. None otherwise: the run
    goes to the deployment's own queue, and a served deployment refuses any queue name (HTTP 400
    "not associated with a work pool"), so none is ever passed to one."""
    if not urgent:
        return None
    return URGENT_QUEUE if await work_pool_of(deployment) else None


async def start_run(reference: str, *, restart: int = 0, reason: str = "") -> str | None:
    """Create the order's flow run; returns its id, or None when the Prefect API cannot be reached."""
    with session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        if order is None or OrderStatus(order.status) in FINAL:
            return None
        if order.flow_run_id and not restart:
            return order.flow_run_id
        name, run_tags, urgent = order.flow_name, tags(order), order.urgent
    key = reference if not restart else f"{reference}/restart-{restart}"
    try:
        queue = await work_queue_for(deployment_name(name), urgent)
        async with prefect_client() as client:
            fr = await arun_deployment(deployment_name(name), client=client, parameters={"reference": reference},
                                      timeout=0, idempotency_key=key, flow_run_name=reference, tags=run_tags,
                                      as_subflow=False, work_queue_name=queue)
    except Exception as exc:  # network errors, API errors: the reconciler will try again
        log.warning("could not start run for %s: %s", reference, type(exc).__name__)
        return None
    try:
        with session() as s:
            order = s.scalar(select(Order).where(Order.reference == reference))
            assert order is not None
            if order.flow_run_id != str(fr.id):
                order.flow_run_id = str(fr.id)
                detail: dict[str, Any] = {"flow_run_id": str(fr.id), "restart": restart}
                if reason:
                    detail["reason"] = reason
                if queue:
                    detail["work_queue"] = queue
                audit.record(s, actor="system", action="run_started", order=order, detail=detail)
    except StaleDataError:
        # The order changed between our read and our write. The reconciler beside a submit starts the same
        # run (same idempotency key) and may store it first: then there is nothing left to do.
        with session() as s:
            if s.scalar(select(Order.flow_run_id).where(Order.reference == reference)) != str(fr.id):
                raise
    return str(fr.id)


_starting: set[asyncio.Task[str | None]] = set()


def start_soon(reference: str) -> None:
    """Start the order's run beside the caller, who answers at once. Should this process stop before the
    run is created, the order has no run id yet and the reconciler starts it."""
    task = asyncio.get_running_loop().create_task(start_run(reference), name=f"start-run-{reference}")
    _starting.add(task)  # a task nobody references can be collected before it finishes
    task.add_done_callback(_starting.discard)


async def resume(reference: str, stage: str, run_input: dict[str, Any]) -> bool:
    """Hand a decision to the suspended run. False when the run was not waiting (it will pick the
    stored decision up itself when it reaches the stage, or the reconciler resumes it)."""
    with session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        run_id = order.flow_run_id if order else None
    if not run_id:
        return False
    try:
        try:
            await aresume_flow_run(UUID(run_id), run_input=run_input)
        except RuntimeError as exc:  # refused by the server (not paused and timed out raise PrefectException)
            # Seen when the process died in the middle of suspending: the run is paused but its input schema
            # was never saved, so Prefect refuses every resume ("Run input schema not found"). The decision
            # is in the orders database: end that run and start the order's next one, which takes it.
            log.warning("run of %s cannot be resumed (%s); replacing it", reference, exc)
            from prefect.states import Crashed
            async with prefect_client() as client:
                await client.set_flow_run_state(UUID(run_id), Crashed(message="Could not be resumed."), force=True)
            return await start_run(reference, restart=runs_started(reference)) is not None
    except (PrefectException, RuntimeError, OSError) as exc:
        log.info("resume of %s/%s not done now: %s", reference, stage, type(exc).__name__)
        return False
    except Exception as exc:  # httpx errors when the API is down
        log.info("resume of %s/%s not done now: %s", reference, stage, type(exc).__name__)
        return False
    return True


async def move_to_urgent_queue(reference: str, run: Any) -> str | None:
    """An order made urgent after its run was created: that run waits in the deployment's own queue, behind
    ordinary work, and Prefect cannot move a flow run to another queue. So a run that is not executing
    (suspended in a human step, or scheduled) is replaced by one in the urgent queue, which continues from
    the orders database. Returns the new run's id; None when there is nothing to move: a served deployment
    (no queues), a run already in the urgent queue, or one executing now (it finishes its step first)."""
    if run.work_queue_name == URGENT_QUEUE or run.state is None:
        return None
    if not (run.state.is_paused() or run.state.is_scheduled()):
        return None
    with session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        if order is None or order.flow_run_id != str(run.id) or OrderStatus(order.status) in FINAL:
            return None
        name = order.flow_name
    if await work_queue_for(deployment_name(name), True) is None:
        return None
    from prefect.states import Cancelled
    async with prefect_client() as client:
        await client.set_flow_run_state(run.id, Cancelled(message="Replaced by a run in the urgent queue."),
                                        force=True)
    return await start_run(reference, restart=runs_started(reference), reason=URGENT_QUEUE_REASON)


async def cancel_run(reference: str) -> bool:
    """Stop the order's run in Prefect (it is usually suspended, so no process is interrupted). False when
    Prefect could not be told (or the order has no run)."""
    from prefect.states import Cancelled
    with session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        run_id = order.flow_run_id if order else None
    if not run_id:
        return False
    try:
        async with prefect_client() as client:
            await client.set_flow_run_state(UUID(run_id), Cancelled(message="order cancelled"), force=True)
    except Exception as exc:  # the run then ends by itself: its next step sees the cancelled order
        log.info("cancel of run for %s not done now: %s", reference, type(exc).__name__)
        return False
    return True


# Where the next liveness window starts (an order id). Each check looks at one window of open orders, so
# the work stays the same with ten or ten thousand orders waiting.
_window_after = 0
# When the next liveness check is due (time.monotonic()); 0: at the first round of a process.
_next_liveness = 0.0
PREFECT_PAGE = 200  # the most flow runs Prefect's API returns per request by default


def liveness_every() -> float:
    """Seconds between liveness checks. A run that ended while its order is open is rare (a crash, an
    expired suspension), while reading a window of runs from Prefect costs both processes CPU: done every
    round (1-2 s) with hundreds of orders waiting, it slowed the flow-run processes of resumed orders."""
    return settings().run_liveness_seconds


async def reconcile(limit: int = 200, now: datetime | None = None) -> dict[str, int]:
    """Repair the gaps between the orders database and Prefect. Safe to run any time, from any process:
    start runs that were never started, hand stored decisions to suspended runs, and start a new run
    for an open order whose run ended (crashed, or a suspension that expired), with backoff and a cap
    (models/runs.py): an order whose runs keep failing is set to `failed` instead.

    Orders without a run and decisions waiting to be handed over are looked for among all open orders, every
    round; whether runs are still alive is checked every `liveness_every()` seconds (and in a process's
    first round), for a window of `limit` orders that moves on each time."""
    global _window_after, _next_liveness
    now = now or datetime.now(UTC)
    check_liveness = time.monotonic() >= _next_liveness
    counts = {"started": 0, "resumed": 0, "restarted": 0, "failed": 0}
    is_open = Order.status.not_in([str(x) for x in FINAL] + [OrderStatus.PAPER_FALLBACK.value])
    with session() as s:
        no_run = list(s.scalars(select(Order.reference).where(is_open, Order.flow_run_id.is_(None))
                                .order_by(Order.id).limit(limit)))
        waiting = s.execute(select(Order.reference, Order.status, Order.flow_run_id, Decision)
                            .join(Decision, Decision.order_id == Order.id)
                            .where(is_open, Order.flow_run_id.is_not(None), Decision.state == "proposed")
                            .order_by(Decision.id).limit(limit)).all()
        proposed = {ref: (d.stage, _input_for(d)) for ref, status, _, d in waiting if STAGE_STATUS.get(d.stage) == status}
        with_run = {ref: str(run) for ref, _, run, _ in waiting if ref in proposed}
        window = s.execute(select(Order.id, Order.reference, Order.flow_run_id)
                           .where(is_open, Order.flow_run_id.is_not(None), Order.id > _window_after)
                           .order_by(Order.id).limit(limit)).all() if check_liveness else []
    if check_liveness:
        _window_after = window[-1].id if len(window) == limit else 0
        _next_liveness = time.monotonic() + liveness_every()
    with_run |= {row.reference: str(row.flow_run_id) for row in window}
    for ref in no_run:
        if not await start_run(ref):
            # The order is open and has no run, so the API did not answer: the rest waits for the next round.
            return counts
        counts["started"] += 1
    if not with_run:
        return counts
    ids = [UUID(r) for r in set(with_run.values())]
    state_of: dict[str, Any] = {}
    try:
        async with prefect_client() as client:
            for i in range(0, len(ids), PREFECT_PAGE):
                chunk = ids[i:i + PREFECT_PAGE]
                runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                                   limit=len(chunk))
                state_of |= {str(r.id): r.state for r in runs}
    except Exception:
        return counts
    for ref, run_id in with_run.items():
        state = state_of.get(run_id)
        if state is None:
            continue
        if state.is_paused() and ref in proposed:
            if await resume(ref, *proposed[ref]):
                counts["resumed"] += 1
        elif state.is_final():
            verdict = restart_policy().verdict(history_from_audit(_run_audit(ref)), now)
            if verdict == RestartVerdict.GIVE_UP:
                if give_up(ref, run_id, now):
                    counts["failed"] += 1
            elif verdict == RestartVerdict.RESTART and await start_run(ref, restart=runs_started(ref)):
                counts["restarted"] += 1
    return counts


def restart_policy() -> RestartPolicy:
    cfg = settings()
    return RestartPolicy(max_restarts=cfg.run_restarts_max,
                         first_delay=timedelta(seconds=cfg.run_restart_delay_seconds))


def _run_audit(reference: str) -> list[tuple[str, str | None, datetime, dict[str, Any] | None]]:
    with session() as s:
        rows = s.execute(select(AuditEvent.action, AuditEvent.to_status, AuditEvent.at, AuditEvent.detail)
                         .where(AuditEvent.order_reference == reference)
                         .where((AuditEvent.action == "run_started") | AuditEvent.to_status.is_not(None))
                         .order_by(AuditEvent.id)).all()
    return [(r.action, r.to_status, r.at, r.detail) for r in rows]


def give_up(reference: str, run_id: str, now: datetime) -> bool:
    """Its runs kept failing: the order ends as `failed` and the people it concerns are told (the emails
    are queued in the same transaction). True when this call made the change."""
    with session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference))
        if order is None or OrderStatus(order.status) in FINAL or order.status == OrderStatus.PAPER_FALLBACK:
            return False
        history = history_from_audit(_run_audit(reference))
        transition(s, order, OrderStatus.FAILED, actor=RECONCILER, action="run_restarts_exhausted", at=now,
                   detail={"restarts": history.restarts_since_progress, "flow_run_id": run_id})
        mail.queue_confirmations(s, order)
    log.error("runs of %s failed %d times in a row: order set to failed", reference,
              history.restarts_since_progress + 1)
    mail.deliver(reference)
    emit_exhausted(reference, run_id, history.restarts_since_progress, now)
    return True


def emit_exhausted(reference: str, run_id: str, restarts: int, now: datetime) -> None:
    """A Prefect event for the dashboard and automations (references only); never raises."""
    try:
        from prefect.events import emit_event
        emit_event(event=EXHAUSTED_EVENT, occurred=now, payload={"restarts": restarts},
                   resource={"prefect.resource.id": f"order.{reference}", "prefect.resource.name": reference},
                   related=[{"prefect.resource.id": f"prefect.flow-run.{run_id}",
                             "prefect.resource.role": "flow-run"}])
    except Exception as exc:
        log.warning("could not emit %s for %s: %s", EXHAUSTED_EVENT, reference, type(exc).__name__)


def runs_started(reference: str) -> int:
    """How many runs the order has had: the next restart's number, which makes its idempotency key."""
    with session() as s:
        return len(list(s.scalars(select(AuditEvent.id).where(AuditEvent.order_reference == reference,
                                                               AuditEvent.action == "run_started"))))


def _input_for(d: Decision) -> dict[str, Any]:
    base: dict[str, Any] = {"decided_by": d.decided_by, "decision_id": d.id}
    if d.stage == "harm_assessment":
        base |= {"harm_found": bool(d.detail.get("harm_found")), "decision": d.outcome,
                 "review_after_days": d.detail.get("review_after_days")}
    elif d.stage == "approval":
        base["approved"] = d.outcome == "approve"
    elif d.stage == "execution":
        base["system_reference"] = str(d.detail.get("system_reference", ""))
    return base


def decision_input(d: Decision) -> dict[str, Any]:
    """The run input that carries a stored decision to the suspended run (no free text)."""
    return _input_for(d)
