"""The `paper-fallback` deployment: the paper routine (reservrutin) for one order, or a sweep of every order
in `paper_fallback` whose orderer was not told yet (the deployment can run it on a schedule, to repair a run
that died between the fallback and the email). The steps are tasks/steps/paper_fallback.py.

`resume_digital(ad, reference, actor)`: when the execution system is back, support puts the order back to
the stage it was at and a new run completes it digitally. The order, its decisions and history are kept.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.bootstrap import passed, process_adapters
from models.tables import Order
from tasks.adapters import Adapters
from tasks.steps import paper_fallback as steps
from tasks.steps.paper_orders import continue_digitally


def _run_name() -> str:
    ref = flow_run.parameters.get("reference")
    return f"{ref}-paper" if ref else "paper-fallback-sweep"


check_paper_form = task(name="check-paper-form", retries=1, retry_delay_seconds=2, persist_result=False,
                        cache_policy=NO_CACHE)(steps.check_paper_form)
notify_orderer = task(name="notify-paper-fallback", retries=2, retry_delay_seconds=2, persist_result=False,
                      cache_policy=NO_CACHE)(steps.notify_orderer)


@flow(name="paper-fallback", flow_run_name=_run_name, persist_result=False, log_prints=False)
async def paper_fallback(reference: str | None = None) -> list[str]:
    """Check the paper form and tell the orderer, for one order, or (no reference) for every order in
    `paper_fallback` that was not told yet. Returns the references handled. The only parameter is the
    order reference: no personal data in Prefect."""
    ad = process_adapters()
    done = []
    for ref in [reference] if reference else steps.untold(ad):
        occasion = check_paper_form(passed(ad), ref)
        if occasion:
            notify_orderer(passed(ad), ref, occasion)
            done.append(ref)
    return done


async def resume_digital(ad: Adapters, reference: str, actor: str) -> Order:
    """The execution system is back: the order returns to the stage it was at (normally `executing`) and
    a new run completes it digitally. Support or admin. Raises orders.NotFound, orders.Conflict (not in
    `paper_fallback`), orders.Forbidden (wrong role or region)."""
    return await continue_digitally(ad, reference, actor)


__all__ = ["paper_fallback", "resume_digital"]
