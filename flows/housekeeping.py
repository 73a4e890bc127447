"""Housekeeping: page and escalate (the urgent path), send the outbox, start runs the engine missed, hand
stored decisions to suspended runs, and the paper routine's sweep.

In production this runs every 15 s from the `housekeeping` deployment, and the app runs the urgent
dispatcher itself every RO_APP_DISPATCH_SECONDS (forms/app.py), so escalations do not depend on Prefect and
its workers; in the embedded default the serving process runs the same steps in two loops every couple of
seconds (flows/serve.py).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bootstrap import passed, process_adapters
from tasks.adapters import Adapters
from tasks.steps.escalation import dispatch
from tasks.steps.paper_fallback import Sweeper
from tasks.steps.runs import crash_stuck, reconcile, report_stalled


@task(name="reconcile-runs", persist_result=False, cache_policy=NO_CACHE)
async def reconcile_runs(ad: Adapters) -> dict[str, int]:
    """Crash the runs nobody executes (their worker is gone), then repair: the crashed ones are replaced in
    the same round; decisions stored for too long are reported."""
    with ad.engine.fails_fast():
        crashed = await crash_stuck(ad)
        counts = await reconcile(ad)
    return counts | {"stuck_crashed": crashed, "stalled_reported": report_stalled(ad)}


@task(name="urgent-dispatch", persist_result=False, cache_policy=NO_CACHE)
def urgent_dispatch(ad: Adapters) -> dict[str, int]:
    """Page urgent orders whose page never went out; escalate missed callbacks, exactly once each."""
    return dispatch(ad, ad.now())


@task(name="send-outbox", persist_result=False, cache_policy=NO_CACHE)
def send_outbox(ad: Adapters) -> dict[str, int]:
    sent, failed = ad.mail.deliver()
    return {"sent": sent, "failed": failed}


def deliver_for(ad: Adapters, references: list[str], now: datetime) -> dict[str, int]:
    """Send the queued mail of these orders now (the monitors' reminders), not when the next round runs."""
    sent = failed = 0
    for ref in references:
        s_, f_ = ad.mail.deliver(ref, now=max(now, ad.now()))
        sent, failed = sent + s_, failed + f_
    return {"sent": sent, "failed": failed}


@task(name="paper-sweep", persist_result=False, cache_policy=NO_CACHE)
async def paper_sweep(ad: Adapters) -> dict[str, int]:
    """Tell orderers a died run did not tell; resume orders digitally once the execution system answers."""
    return await Sweeper().sweep(ad)


@flow(name="housekeeping", persist_result=False)
async def housekeeping() -> dict[str, int]:
    ad = process_adapters()
    # The urgent path first: the reconciler talks to the engine and may take its time when Prefect is slow.
    counts = urgent_dispatch(passed(ad)) | send_outbox(passed(ad))
    counts |= await reconcile_runs(passed(ad))
    return counts | await paper_sweep(passed(ad))
