"""Run every flow in this process (the embedded default), with the housekeeping loop beside it.

`python -m flows.serve` — used by `make run` and the end-to-end tests. The flows are deployed to a local work
pool (`restriction-orders-embedded`, of the `warm` type, with the queues `urgent` and `orders` as production's
`restriction-orders`) and
executed by a warm worker in this process (tasks/adapters/warm_worker.py): each flow-run segment runs on a
thread here, claimed the moment Prefect's events say a run became claimable, instead of a new Python process
per segment as `prefect.serve` does. Deployment names (`flow/flow`), flow names and tags are those of
`prefect.serve`. `RO_SERVE_MODE=process` keeps the old path (`prefect.serve`, a process per run segment) for
the benchmark's before/after (bench/bench_order_e2e.py --old-path).

In production the same flows are deployed with `prefect deploy --all` (prefect.yaml) and run by warm
workers (`python -m tasks.adapters.warm_worker --pool restriction-orders`) on as many machines as wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tasks.adapters.engine import URGENT_QUEUE

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

# Nothing heavy at import, on purpose: each flow run of this process is a spawned child (multiprocessing
# "spawn", as Prefect's runner starts it), and a spawned child imports the parent's main module again, as
# `__mp_main__`. With the flows imported here, every resumed order paid for importing every flow module
# (and Prefect's deployment machinery); now a child imports only the flow it runs.
if TYPE_CHECKING:
    from tasks.adapters import Adapters
log = logging.getLogger("restriction_orders.serve")
ROOT = Path(__file__).resolve().parent.parent


def served_flows() -> list[Flow[Any, Any]]:
    """The order flows, then urgent-order, housekeeping and paper-fallback. Served without a schedule: the
    loops below do their work continuously; the deployments are there to run by hand."""
    from flows.fallback import paper_fallback
    from flows.housekeeping import housekeeping
    from flows.order import ORDER_FLOWS
    from flows.urgent import urgent_order
    return [*ORDER_FLOWS.values(), urgent_order, housekeeping, paper_fallback]


def housekeeping_loop(ad: Adapters, every: float, stop: threading.Event | None = None) -> None:
    """The Prefect side of housekeeping: crash runs nobody executes, start missing runs, hand stored decisions
    over, replace ended runs, report decisions that do not move. Fails fast when Prefect is down or hangs;
    paging, escalation and mail run in their own loop."""
    from tasks.steps.paper_fallback import Sweeper
    from tasks.steps.runs import LivenessWindow, report_stalled
    stop = stop or threading.Event()
    window, sweeper = LivenessWindow(), Sweeper()
    while not stop.is_set():
        try:
            with ad.engine.fails_fast():
                asyncio.run(_round(ad, window, sweeper))
            report_stalled(ad)
        except Exception as exc:  # keep going: the next round repairs what this one could not
            log.warning("housekeeping round failed: %s", type(exc).__name__)
        stop.wait(every)


async def _round(ad: Adapters, window: Any, sweeper: Any) -> None:
    from tasks.steps.runs import crash_stuck, reconcile
    if await crash_stuck(ad):
        window.next_check = 0.0  # replace what was just crashed in this round, not at the next liveness check
    await reconcile(ad, window=window)
    await sweeper.sweep(ad)  # tell the untold, resume when the execution system is back


def start_housekeeping(ad: Adapters, every: float) -> None:
    """Two daemon threads: the urgent path (page, escalate, send the outbox; database and SMTP only) first
    and apart from the reconciler, so a Prefect outage never delays an escalation."""
    from tasks.steps.escalation import start_dispatcher
    start_dispatcher(ad, every, name="urgent-dispatch", deliver_outbox=True)
    threading.Thread(target=housekeeping_loop, args=(ad, every), daemon=True, name="housekeeping").start()


def _monitors() -> list[tuple[Flow[Any, Any], str, list[Any]]]:
    """(flow, deployment name, schedules) of the scheduled monitors; tests run them without schedules
    (RO_SERVE_SCHEDULES=0) and by hand."""
    from prefect.schedules import Cron, Interval

    from flows.audit_verify import audit_verify
    from flows.review import review_reminders
    from flows.sla import sla_monitor
    scheduled = os.environ.get("RO_SERVE_SCHEDULES", "1") != "0"
    sla_every = int(os.environ.get("RO_SLA_MONITOR_SECONDS", "180"))
    return [
        (sla_monitor, "sla-monitor", [Interval(sla_every, timezone="Europe/Stockholm")] if scheduled else []),
        (review_reminders, "review-reminders", [Cron("0 6 * * *", timezone="Europe/Stockholm")] if scheduled else []),
        (audit_verify, "audit-verify", [Cron("17 * * * *", timezone="Europe/Stockholm")] if scheduled else []),
    ]


MONITOR_TAGS = ["restriction-orders", "ops"]


def monitoring_deployments() -> list[RunnerDeployment]:
    """The scheduled monitors as `prefect.serve` deployments (no work pool)."""
    return [cast("RunnerDeployment", f.to_deployment(name=name, tags=MONITOR_TAGS, schedules=schedules))
            for f, name, schedules in _monitors()]


# --- the embedded default's work pool and its warm worker ------------------------------------------------

EMBEDDED_POOL = "restriction-orders-embedded"  # queues as production's pool (prefect.yaml); a name of its own
ORDERS_QUEUE = "orders"
POOL_QUEUES = ((URGENT_QUEUE, 1), (ORDERS_QUEUE, 2))  # urgent work first


def entrypoint_of(f: Flow[Any, Any]) -> str:
    """`flows/order.py:seal_or_lock`: the module file under the code directory and the name the flow has
    there (the order flows are made by a factory, so the function's own name is not it)."""
    import sys
    module = sys.modules[f.fn.__module__]
    name = next(k for k, v in vars(module).items() if v is f)
    assert module.__file__ is not None
    return f"{Path(module.__file__).resolve().relative_to(ROOT).as_posix()}:{name}"


def pool_deployments(pool: str = EMBEDDED_POOL) -> list[RunnerDeployment]:
    """Every flow of `served_flows()` and the monitors, deployed to `pool`: the order flows to its `orders`
    queue, the rest to `urgent` (as prefect.yaml does); names and tags as `prefect.serve` gives them."""
    from flows.order import ORDER_FLOWS
    order_flows = {f.name for f in ORDER_FLOWS.values()}
    specs: list[tuple[Flow[Any, Any], str, list[str], list[Any]]] = \
        [(f, f.name, ["restriction-orders"], []) for f in served_flows()] + \
        [(f, name, MONITOR_TAGS, schedules) for f, name, schedules in _monitors()]
    out = []
    for f, name, tags, schedules in specs:
        queue = ORDERS_QUEUE if f.name in order_flows else URGENT_QUEUE
        d = cast("RunnerDeployment", f.to_deployment(name=name, tags=tags, schedules=schedules,
                                                    work_pool_name=pool, work_queue_name=queue))
        d.entrypoint = entrypoint_of(f)
        out.append(d)
    return out


async def deploy_to_pool(deployments: list[RunnerDeployment], pool: str = EMBEDDED_POOL) -> None:
    """The pool (type `warm`), its queues, and the deployments (`pool_deployments`, made outside the event
    loop: `to_deployment` is a coroutine inside one). Idempotent: every start does it again."""
    await ensure_pool(pool)
    await asyncio.gather(*(d.aapply() for d in deployments))


async def ensure_pool(pool: str = EMBEDDED_POOL) -> None:
    """The pool and its queues, before the worker starts (it would create a bare pool itself)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from tasks.adapters.warm_worker import WORKER_TYPE, WarmWorker
    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type=WORKER_TYPE, base_job_template=WarmWorker.get_default_base_job_template()))
        for queue, priority in POOL_QUEUES:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)


def _report_deploy(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("deployments not applied: %s", task.exception())


def worker_name() -> str:
    """This process's worker: a name of its own per process (tests/conftest.py waits for it by the pid)."""
    return f"serve-{socket.gethostname()}-{os.getpid()}"


async def run_warm_worker(deployments: list[RunnerDeployment], pool: str = EMBEDDED_POOL) -> None:
    """Deploy, and execute this pool's runs here until SIGTERM/SIGINT (segments in flight finish). The worker
    starts while the deployments are applied: after a restart they exist already, and the runs waiting for
    this process are claimed some seconds sooner."""
    from tasks.adapters.warm_worker import WarmWorker, serve
    await ensure_pool(pool)
    deploying = asyncio.ensure_future(asyncio.gather(*(d.aapply() for d in deployments)))
    deploying.add_done_callback(_report_deploy)
    worker = WarmWorker(pool, code_dir=ROOT, name=worker_name(), limit=int(os.environ.get("RO_SERVE_LIMIT", "20")),
                        heartbeat_interval_seconds=int(os.environ.get("RO_WORKER_HEARTBEAT_SECONDS", "10")))
    await serve(worker)


async def crash_orphaned_runs() -> int:
    """Mark Crashed the order runs still Running or Pending when this process starts.

    The embedded default has one serving process, so such a run lost its process when the previous one
    died (SIGKILL, power cut). Crashed is final, so the reconciler starts a new run for the open order,
    which continues from the orders database. Production runs workers instead, and leaves this to Prefect's
    heartbeats and a zombie automation (README, "Production layout")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from models.routine import ORDER_FLOW_NAMES
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(ORDER_FLOW_NAMES))),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))), limit=200)
        for run in runs:
            await client.set_flow_run_state(run.id, Crashed(message="Its serving process stopped."), force=True)
    if runs:
        log.warning("marked %d orphaned order runs as crashed; the reconciler continues their orders", len(runs))
    return len(runs)


def main() -> None:
    from tasks.adapters.prefect_auth import use_embedded_secret
    from tasks.adapters.settings import Settings
    use_embedded_secret(Settings().data_dir)  # started by hand on the embedded default: its Prefect API is locked (before Prefect loads)
    if os.environ.get("RO_SOLE_SERVER", "1") == "1":
        try:
            asyncio.run(crash_orphaned_runs())
        except Exception as exc:  # Prefect not reachable yet: the runs stay as they are until next start
            log.warning("could not look for orphaned runs: %s", type(exc).__name__)
    every = float(os.environ.get("RO_HOUSEKEEPING_SECONDS", "2"))
    from flows.bootstrap import build
    start_housekeeping(build(), every)
    if os.environ.get("RO_SERVE_MODE", "warm") == "process":
        serve_processes()
    else:
        asyncio.run(run_warm_worker(pool_deployments()))


def serve_processes() -> None:
    """The old path, for before/after measurements: `prefect.serve`, a new Python process per run segment."""
    from prefect import serve
    deployments = [cast("RunnerDeployment", f.to_deployment(name=f.name, tags=["restriction-orders"]))
                   for f in served_flows()] + monitoring_deployments()
    serve(*deployments, limit=int(os.environ.get("RO_SERVE_LIMIT", "20")), print_starting_message=False)


if __name__ == "__main__":
    main()
