"""The SLA monitor (`sla-monitor`, every few minutes): late orders turn red and people are reminded, once per breach.

Each run:
1. flags every open order whose due time has passed and was not flagged before (audit `overdue`, a
   Deviation row, one email to the responsible person — the head of department, or for urgent orders the
   region's support queue — and one to the region's support queue, and the Prefect event `order.overdue`
   on resource `order.<reference>`). A later run finds the audit row and does nothing for that due time;
   a new due time that passes is a new breach and reminds again;
2. sends the queued reminders;
3. refreshes the table artifact `open-orders`: open orders per region and status and how many are late.

Only references, codes and counts reach Prefect (parameters, results, events, the artifact).
"""

from __future__ import annotations

import json
from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import Artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.bootstrap import adapters_at, passed
from flows.housekeeping import deliver_for
from models import sla, swedish
from models.status import LABELS_SV, OrderStatus
from tasks.adapters import Adapters
from tasks.steps import monitoring

ARTIFACT_KEY = "open-orders"


@task(name="flag-overdue-orders", persist_result=False, cache_policy=NO_CACHE)
def flag_overdue(ad: Adapters, now: datetime) -> list[str]:
    flags = monitoring.flag_overdue(ad, now)
    if flags:
        get_run_logger().info("flagged %d overdue: %s", len(flags),
                              ", ".join(f"{f.reference}#{f.breach}" for f in flags))
    return [f.reference for f in flags]


send_reminders = task(name="send-reminders", persist_result=False, cache_policy=NO_CACHE)(deliver_for)


def open_orders_table(ad: Adapters, now: datetime) -> list[dict[str, str | int]]:
    with ad.db.session() as s:
        counts = monitoring.open_order_counts(s, now)
    names = {code: r.name for code, r in ad.regions.items()}
    return sla.counts_table(counts, names, {s.value: LABELS_SV[s] for s in OrderStatus})


@task(name="publish-open-orders", persist_result=False, cache_policy=NO_CACHE)
def publish_open_orders(ad: Adapters, now: datetime) -> bool:
    """A new version of the `open-orders` table when the figures changed; True when one was made."""
    table = open_orders_table(ad, now)
    latest = Artifact.get(ARTIFACT_KEY)  # sync here (a sync task); typed as "maybe a coroutine"
    if getattr(latest, "data", None) == json.dumps(table):
        return False
    create_table_artifact(key=ARTIFACT_KEY, table=table,
                          description=f"Öppna beställningar per region och status, och hur många som är försenade "
                                      f"(röda). Ändrad {swedish.when(now)}. Inga personuppgifter.")
    return True


@flow(name="sla-monitor", persist_result=False, log_prints=False)
def sla_monitor(now: datetime | None = None) -> dict[str, int]:
    ad, at = adapters_at(now)
    flagged = flag_overdue(passed(ad), at)
    counts = send_reminders(passed(ad), flagged, at) if flagged else {"sent": 0, "failed": 0}
    published = publish_open_orders(passed(ad), at)
    return {"flagged": len(flagged), **counts, "artifact_updated": int(published)}
