"""Housekeeping: start runs the Prefect API missed, hand stored decisions to suspended runs, escalate missed
callbacks, send the outbox.

In production this runs every minute from the `housekeeping` deployment; in the embedded default the
serving process runs the same steps in a loop every couple of seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.fallback import paper_sweep
from tasks.escalation import dispatch
from tasks.launch import reconcile
from tasks.mail import deliver


@task(name="reconcile-runs", persist_result=False, cache_policy=NO_CACHE)
async def reconcile_runs() -> dict[str, int]:
    return await reconcile()


@task(name="urgent-dispatch", persist_result=False, cache_policy=NO_CACHE)
def urgent_dispatch() -> dict[str, int]:
    """Page urgent orders whose page never went out; escalate missed callbacks, exactly once each."""
    return dispatch(datetime.now(UTC))


@task(name="send-outbox", persist_result=False, cache_policy=NO_CACHE)
def send_outbox() -> dict[str, int]:
    sent, failed = deliver()
    return {"sent": sent, "failed": failed}


@flow(name="housekeeping", persist_result=False)
async def housekeeping() -> dict[str, int]:
    counts = await reconcile_runs()
    counts |= await paper_sweep()  # flows/fallback.py: tell the untold, resume when the system is back
    return counts | urgent_dispatch() | send_outbox()
