"""The urgent on-call path: make an order urgent, page on-call, keep the callback clock, make sure the order
run is going. Used by the app (forms/urgent_routes.py), the command line (forms/cli.py) and the Prefect
deployment `urgent-order` (parameter `reference`) that on-call support starts from the dashboard.

The service functions change the orders database first and page before they talk to the engine, so
neither a Prefect outage nor a worker's polling interval delays the page; the callback deadline is a
database row that the escalation dispatcher (tasks/steps/escalation.py) fires, not a sleeping process. The
database work is tasks/steps/urgency.py.

`python -m flows.urgent` serves the `urgent-order` deployment on its own (the embedded default serves it
from flows/serve.py beside the order flows).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from flows import commands
from flows.bootstrap import passed, process_adapters
from models.status import OrderStatus
from models.tables import Deadline
from tasks.adapters import Adapters
from tasks.adapters.engine import URGENT_TAG
from tasks.steps import paging, runs, urgency
from tasks.steps.orders import NotFound, get
from tasks.steps.urgency import normalise_reference

log = logging.getLogger(__name__)
FLOW_ACTOR = "prefect:urgent-order"


async def ensure_run(ad: Adapters, reference: str) -> str | None:
    """The order's run exists and is alive (started now if it was never started, restarted if it ended
    while the order is open) and carries the `urgent` tag. None when the engine cannot be reached: the
    housekeeping reconciler starts it later."""
    run_id = await runs.start_run(ad, reference)
    if not run_id:
        return None
    try:
        run = await ad.engine.read_run(run_id)
        if run.final:
            return await runs.start_run(ad, reference, restart=runs.runs_started(ad, reference)) or run_id
        moved = await runs.move_to_urgent_queue(ad, reference, run)  # work pools only (production)
        if moved:
            return moved
        await ad.engine.add_tag(run_id, URGENT_TAG)
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


async def start_urgent(ad: Adapters, reference: str, actor: str, now: datetime | None = None, *,
                       check_actor: bool = False, start_run: bool = True) -> UrgentOutcome:
    """Make the order urgent, page at once, then make sure its run is going (in that order: the page
    never waits for the engine)."""
    now = now or ad.now()
    # The database and SMTP work runs in a thread: an app's event loop keeps serving meanwhile.
    made = await asyncio.to_thread(urgency.make_urgent, ad, reference, actor, now, check_actor=check_actor)
    page = await asyncio.to_thread(paging.page_order, ad, made.reference, now, actor=actor)
    run_id = await ensure_run(ad, made.reference) if start_run else None
    with ad.db.session() as s:
        status = get(s, made.reference).status
    return UrgentOutcome(made.reference, made.changed, status, made.callback_due_at,
                         page.target if page else None, bool(page and page.delivered), run_id)


@dataclass(frozen=True)
class CallbackOutcome:
    reference: str
    status: str
    recorded_at: datetime
    on_time: bool
    via: Literal["run", "stored"]   # run: handed to the waiting run; stored: the run is past that stage


async def record_callback(ad: Adapters, reference: str, actor: str, note: str = "",
                          now: datetime | None = None) -> CallbackOutcome:
    """On-call has called the orderer back: stop the clock and let the order continue.

    The moment recorded here is what the escalation dispatcher judges by. An order waiting in its callback
    stage gets the decision through the run (flows.commands.decide); an order whose run has not reached
    the stage yet gets it stored for the run to take; an order made urgent after it had passed that stage
    has its clock stopped directly. Raises NotFound, Conflict, Forbidden."""
    now = now or ad.now()
    ref = normalise_reference(reference)
    with ad.db.session() as s:
        status = OrderStatus(get(s, ref).status)
    via: Literal["run", "stored"]
    if status == OrderStatus.AWAITING_CALLBACK:
        order = await commands.decide(ad, ref, "callback", actor, {"note": note}, now=now)
        via, status_after = "run", order.status
    else:
        status_after = urgency.retrying(urgency.store_callback, ad, ref, actor, note, now)
        via = "stored"
    with ad.db.session() as s:
        dl = s.scalar(select(Deadline).where(Deadline.order_reference == ref, Deadline.kind == "callback")
                      .order_by(Deadline.due_at.desc()))
    on_time = dl is not None and now <= dl.due_at
    return CallbackOutcome(ref, status_after, now, on_time, via)


# --- the Prefect deployment ---------------------------------------------------------------------------

def _run_name() -> str:
    from prefect.runtime import flow_run
    try:
        return f"urgent-{normalise_reference(str(flow_run.parameters.get('reference', '')))}"
    except ValueError:
        return "urgent-invalid-reference"  # never echo what was typed: it could be a personal number


def _made(ad: Adapters, reference: str) -> dict[str, Any]:
    made = urgency.make_urgent(ad, reference, FLOW_ACTOR, ad.now())
    return {"reference": made.reference, "made_urgent": made.changed, "status": made.status,
            "callback_due_at": made.callback_due_at.isoformat() if made.callback_due_at else None}


def _paged(ad: Adapters, reference: str) -> dict[str, Any]:
    page = paging.page_order(ad, reference, ad.now(), actor=FLOW_ACTOR)
    if page is None:
        return {"paged": None, "delivered": False}
    return {"paged": page.target, "delivered": page.delivered, "new": page.new}


make_urgent_task = task(name="make-urgent", persist_result=False, cache_policy=NO_CACHE)(_made)
page_task = task(name="page-on-call", persist_result=False, cache_policy=NO_CACHE, retries=2,
                 retry_delay_seconds=2)(_paged)
ensure_run_task = task(name="ensure-order-run", persist_result=False, cache_policy=NO_CACHE)(ensure_run)


@flow(name="urgent-order", flow_run_name=_run_name, persist_result=False, log_prints=False,
      description="Gör en befintlig beställning brådskande: återuppringning inom regionens tid, sök beredskapen, "
                  "se till att beställningens körning går. Parameter: beställningens referens (RO-ÅÅÅÅ-NNNNNN).")
async def urgent_order(reference: str) -> dict[str, Any]:
    ad = process_adapters()
    ref = normalise_reference(reference)
    try:
        made = make_urgent_task(passed(ad), ref)
    except NotFound:
        raise ValueError("no order with that reference") from None
    page = page_task(passed(ad), ref)
    run_id = await ensure_run_task(passed(ad), ref)
    return {**made, **page, "order_run": run_id}


def serve_urgent() -> None:
    """Serve only the `urgent-order` deployment (the embedded default serves it from flows/serve.py)."""
    from prefect import serve
    from prefect.deployments.runner import RunnerDeployment
    deployment = cast(RunnerDeployment, urgent_order.to_deployment(
        name=urgent_order.name, tags=["restriction-orders", URGENT_TAG]))
    serve(deployment, print_starting_message=False)


if __name__ == "__main__":
    # Through the package, so the served flow is `flows.urgent.urgent_order`, not a copy in `__main__`.
    from flows.urgent import serve_urgent as _serve
    _serve()
