"""What people do to orders, as the app, the CLI and the tests call it: the service layer's entry points.

Each command changes the orders database first (the system of record) and then tells Prefect; when
Prefect cannot be told right now, the housekeeping reconciler finishes the job.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from models.tables import Order
from tasks import launch, mail, orders, paging, timeline

STAGE_OUTCOME = {
    "harm_assessment": lambda d: d["decision"],
    "approval": lambda d: "approve" if d["approved"] else "reject",
    "callback": lambda d: "done",
    "execution": lambda d: "done",
}
TEXT_FIELD = {"harm_assessment": "rationale", "approval": "comment", "callback": "note", "execution": ""}


async def submit(raw: Any, actor: str, *, now: datetime | None = None, idempotency_key: str | None = None,
                 channel: str = "digital", wait_for_run: bool = True) -> orders.SubmitOutcome:
    """Store the order, then start exactly one flow run for it (or leave that to the reconciler).

    `wait_for_run=False` (the app) answers as soon as the order is stored and starts the run beside it:
    a person never waits for a busy Prefect server, and the order is safe in the database either way."""
    now = now or datetime.now(UTC)
    # In a thread: the app's event loop keeps serving other people while the database works.
    outcome = await asyncio.to_thread(orders.submit, raw, actor, now, idempotency_key=idempotency_key,
                                      channel=channel)
    if outcome.kind == "created" and outcome.order is not None:
        if outcome.order.urgent:  # page at once, before and independent of the Prefect run (tasks/paging.py)
            await asyncio.to_thread(paging.page_safely, outcome.order.reference, now)
        if wait_for_run:
            await launch.start_run(outcome.order.reference)
        else:
            launch.start_soon(outcome.order.reference)
    return outcome


async def decide(reference: str, stage: str, actor: str, body: dict[str, Any],
                 now: datetime | None = None) -> Order:
    """Record a person's decision on a stage and hand it to the waiting run.

    Raises orders.NotFound, orders.Conflict (wrong status) or orders.Forbidden (role, four eyes)."""
    text_field = TEXT_FIELD[stage]
    text = str(body.get(text_field, "")) if text_field else ""
    detail = {k: v for k, v in body.items() if k != text_field}
    order, decision = orders.propose(reference, stage, actor, STAGE_OUTCOME[stage](body), detail, text, now)
    await launch.resume(reference, stage, launch.decision_input(decision))
    return order


async def cancel(reference: str, actor: str, reason: str) -> Order:
    """Cancel before execution: the order ends, its waiting run is cancelled, the orderer is told."""
    order = orders.cancel(reference, actor, reason)  # queues the orderer's email with the status
    told = await launch.cancel_run(reference)
    mail.deliver(reference)
    if told:  # the cancelled run publishes nothing more: the command updates the order's card itself
        await asyncio.to_thread(timeline.publish, order.reference)
    return order


def deliver_mail() -> tuple[int, int]:
    return mail.deliver()
