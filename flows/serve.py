"""Serve every flow in this process (the embedded default), with the housekeeping loop beside it.

`python -m flows.serve` — used by `make run` and the end-to-end tests. In production the same flows are
deployed with `prefect deploy --all` (prefect.yaml) and run by workers on a process work pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, cast

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval

from flows.block_guardian import block_guardian
from flows.fallback import paper_fallback
from flows.housekeeping import housekeeping
from flows.minor_access import minor_access
from flows.restore_access import restore_access
from flows.review import review_reminders
from flows.seal_or_lock import seal_or_lock
from flows.sla import sla_monitor
from flows.urgent import urgent_order

ORDER_FLOWS = [seal_or_lock, restore_access, block_guardian, minor_access]
# Served without a schedule: the loop below does its work continuously; the deployment is there to run by hand.
SERVED: list[Flow[Any, Any]] = [*ORDER_FLOWS, urgent_order, housekeeping, paper_fallback]
log = logging.getLogger("restriction_orders.serve")


def housekeeping_loop(every: float) -> None:
    """Start missing runs, hand over stored decisions, page and escalate urgent orders, send the outbox."""
    from datetime import UTC, datetime

    from tasks.escalation import dispatch
    from tasks.launch import reconcile
    from tasks.mail import deliver
    while True:
        try:
            asyncio.run(reconcile())
            dispatch(datetime.now(UTC))
            deliver()
        except Exception as exc:  # keep going: the next round repairs what this one could not
            log.warning("housekeeping round failed: %s", type(exc).__name__)
        time.sleep(every)


def monitoring_deployments() -> list[RunnerDeployment]:
    """The scheduled monitors; tests serve them without schedules (RO_SERVE_SCHEDULES=0) and run them by hand."""
    scheduled = os.environ.get("RO_SERVE_SCHEDULES", "1") != "0"
    sla_every = int(os.environ.get("RO_SLA_MONITOR_SECONDS", "180"))
    return [
        cast(RunnerDeployment, sla_monitor.to_deployment(
            name="sla-monitor", tags=["restriction-orders", "ops"],
            schedules=[Interval(sla_every, timezone="Europe/Stockholm")] if scheduled else [])),
        cast(RunnerDeployment, review_reminders.to_deployment(
            name="review-reminders", tags=["restriction-orders", "ops"],
            schedules=[Cron("0 6 * * *", timezone="Europe/Stockholm")] if scheduled else [])),
    ]


def main() -> None:
    every = float(os.environ.get("RO_HOUSEKEEPING_SECONDS", "2"))
    threading.Thread(target=housekeeping_loop, args=(every,), daemon=True, name="housekeeping").start()
    deployments = [cast(RunnerDeployment, f.to_deployment(name=f.name, tags=["restriction-orders"]))
                   for f in SERVED] + monitoring_deployments()
    serve(*deployments, limit=int(os.environ.get("RO_SERVE_LIMIT", "20")), print_starting_message=False)


if __name__ == "__main__":
    main()
