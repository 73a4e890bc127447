"""Housekeeping: escalate missed callbacks, send the outbox, start runs the Prefect API missed, hand stored
decisions to suspended runs.

In production this runs every minute from the `housekeeping` deployment, and the app runs the urgent
dispatcher itself every RO_APP_DISPATCH_SECONDS (forms/app.py), so escalations do not depend on Prefect and
its workers; in the embedded default the serving process runs the same steps in two loops every couple of
seconds (flows/serve.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.fallback import paper_sweep
from tasks.escalation import dispatch
from tasks.launch import prefect_fails_fast, reconcile
from tasks.mail import deliver


@task(name="reconcile-runs", persist_result=False, cache_policy=NO_CACHE)
async def reconcile_runs() -> dict[str, int]:
    with prefect_fails_fast():
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
    # The urgent path first: the reconciler talks to Prefect and may take its time when Prefect is slow.
    counts = urgent_dispatch() | send_outbox()
    counts |= await reconcile_runs()
    return counts | await paper_sweep()  # flows/fallback.py: tell the untold, resume when the system is back
