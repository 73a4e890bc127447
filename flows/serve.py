"""Serve every flow in this process (the embedded default), with the housekeeping loop beside it.

`python -m flows.serve` — used by `make run` and the end-to-end tests. In production the same flows are
deployed with `prefect deploy --all` (prefect.yaml) and run by workers on a process work pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, cast

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


def served_flows() -> list[Flow[Any, Any]]:
    """The order flows, then urgent-order, housekeeping and paper-fallback. Served without a schedule: the
    loops below do their work continuously; the deployments are there to run by hand."""
    from flows.fallback import paper_fallback
    from flows.housekeeping import housekeeping
    from flows.order import ORDER_FLOWS
    from flows.urgent import urgent_order
    return [*ORDER_FLOWS.values(), urgent_order, housekeeping, paper_fallback]


def housekeeping_loop(ad: Adapters, every: float, stop: threading.Event | None = None) -> None:
    """The Prefect side of housekeeping: start missing runs, hand stored decisions over, replace ended runs.
    Fails fast when Prefect is down or hangs; paging, escalation and mail run in their own loop."""
    from tasks.steps.paper_fallback import Sweeper
    from tasks.steps.runs import LivenessWindow, reconcile
    stop = stop or threading.Event()
    window, sweeper = LivenessWindow(), Sweeper()
    while not stop.is_set():
        try:
            with ad.engine.fails_fast():
                asyncio.run(reconcile(ad, window=window))
                asyncio.run(sweeper.sweep(ad))  # tell the untold, resume when the execution system is back
        except Exception as exc:  # keep going: the next round repairs what this one could not
            log.warning("housekeeping round failed: %s", type(exc).__name__)
        stop.wait(every)


def start_housekeeping(ad: Adapters, every: float) -> None:
    """Two daemon threads: the urgent path (page, escalate, send the outbox; database and SMTP only) first
    and apart from the reconciler, so a Prefect outage never delays an escalation."""
    from tasks.steps.escalation import start_dispatcher
    start_dispatcher(ad, every, name="urgent-dispatch", deliver_outbox=True)
    threading.Thread(target=housekeeping_loop, args=(ad, every), daemon=True, name="housekeeping").start()


def monitoring_deployments() -> list[RunnerDeployment]:
    """The scheduled monitors; tests serve them without schedules (RO_SERVE_SCHEDULES=0) and run them by hand."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Cron, Interval

    from flows.audit_verify import audit_verify
    from flows.review import review_reminders
    from flows.sla import sla_monitor
    scheduled = os.environ.get("RO_SERVE_SCHEDULES", "1") != "0"
    sla_every = int(os.environ.get("RO_SLA_MONITOR_SECONDS", "180"))
    return [
        cast(RunnerDeployment, sla_monitor.to_deployment(
            name="sla-monitor", tags=["restriction-orders", "ops"],
            schedules=[Interval(sla_every, timezone="Europe/Stockholm")] if scheduled else [])),
        cast(RunnerDeployment, review_reminders.to_deployment(
            name="review-reminders", tags=["restriction-orders", "ops"],
            schedules=[Cron("0 6 * * *", timezone="Europe/Stockholm")] if scheduled else [])),
        cast(RunnerDeployment, audit_verify.to_deployment(
            name="audit-verify", tags=["restriction-orders", "ops"],
            schedules=[Cron("17 * * * *", timezone="Europe/Stockholm")] if scheduled else [])),
    ]


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
    from prefect import serve
    from prefect.deployments.runner import RunnerDeployment
    deployments = [cast(RunnerDeployment, f.to_deployment(name=f.name, tags=["restriction-orders"]))
                   for f in served_flows()] + monitoring_deployments()
    serve(*deployments, limit=int(os.environ.get("RO_SERVE_LIMIT", "20")), print_starting_message=False)


if __name__ == "__main__":
    main()
