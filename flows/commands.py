"""What people do to orders, as the app, the CLI and the tests call it: the service layer's entry points.

Each command changes the orders database first (the system of record) and then tells the engine; when
the engine cannot be told right now, the housekeeping reconciler finishes the job.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from models.tables import Order
from tasks.adapters import Adapters, timeline
from tasks.steps import orders, paging, runs


async def submit(ad: Adapters, raw: Any, actor: str, *, now: datetime | None = None,
                 idempotency_key: str | None = None, channel: str = "digital",
                 wait_for_run: bool = True) -> orders.SubmitOutcome:
    """Store the order, then start exactly one flow run for it (or leave that to the reconciler).

    `wait_for_run=False` (the app) answers as soon as the order is stored and starts the run beside it:
    a person never waits for a busy engine, and the order is safe in the database either way."""
    now = now or ad.now()
    # In a thread: the app's event loop keeps serving other people while the database works.
    outcome = await asyncio.to_thread(orders.submit, ad, raw, actor, now, idempotency_key=idempotency_key,
                                      channel=channel)
    if outcome.kind == "created" and outcome.order is not None:
        ref = outcome.order.reference
        if outcome.order.urgent:  # page at once, before and independent of the run (tasks/steps/paging.py)
            await asyncio.to_thread(paging.page_safely, ad, ref, now)
        if wait_for_run:
            await runs.start_run(ad, ref)
        else:
            await ad.engine.spawn(runs.start_run(ad, ref), name=f"start-run-{ref}")
    return outcome


async def decide(ad: Adapters, reference: str, stage: str, actor: str, body: dict[str, Any],
                 now: datetime | None = None) -> Order:
    """Record a person's decision on a stage and hand it to the waiting run.

    Raises orders.NotFound, orders.Conflict (wrong status) or orders.Forbidden (role, four eyes)."""
    order, decision = orders.propose(ad, reference, stage, actor, body, now)
    await runs.resume(ad, reference, stage, runs.decision_input(decision))
    return order


async def cancel(ad: Adapters, reference: str, actor: str, reason: str) -> Order:
    """Cancel before execution: the order ends, its waiting run is cancelled, the orderer is told."""
    order = orders.cancel(ad, reference, actor, reason)  # queues the orderer's email with the status
    told = await runs.cancel_run(ad, reference)
    ad.mail.deliver(reference)
    if told:  # the cancelled run publishes nothing more: the command updates the order's card itself
        await asyncio.to_thread(timeline.publish, ad, order.reference)
    return order
