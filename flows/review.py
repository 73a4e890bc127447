"""Regular re-assessment of care-initiated restrictions (DOMAIN: product decisions, §2.4).

- `review-reminders` (daily, 06:00 Europe/Stockholm): every executed care-initiated restriction whose review
  date has come gets one email to the head of department of the ordering unit, once per review period.
- `record_outcome` (called by the app, `POST /api/orders/{reference}/review`): the head records the outcome,
  `keep` (audited; next review = now + the region's interval) or `restore` (a `restore_access` order for the
  same patient and actions is started through `flows.commands.submit`, audited on both orders).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import IntegrityError

from flows import commands
from flows.bootstrap import adapters_at, passed
from flows.housekeeping import deliver_for
from tasks.adapters import Adapters
from tasks.steps import monitoring
from tasks.steps.monitoring import ReviewRefused, ReviewResult


@task(name="send-review-reminders", persist_result=False, cache_policy=NO_CACHE)
def remind(ad: Adapters, now: datetime) -> list[str]:
    refs = monitoring.send_review_reminders(ad, now)
    if refs:
        get_run_logger().info("review reminders: %s", ", ".join(refs))
    return refs


send = task(name="send-outbox", persist_result=False, cache_policy=NO_CACHE)(deliver_for)


@flow(name="review-reminders", persist_result=False, log_prints=False)
def review_reminders(now: datetime | None = None) -> dict[str, int]:
    ad, at = adapters_at(now)
    refs = remind(passed(ad), at)
    counts = send(passed(ad), refs, at) if refs else {"sent": 0, "failed": 0}
    return {"reminded": len(refs), **counts}


async def record_outcome(ad: Adapters, reference: str, actor: str, outcome: str,
                         now: datetime | None = None) -> ReviewResult:
    """The head of department's review outcome. Raises tasks.steps.orders.NotFound or ReviewRefused."""
    at = now or ad.now()
    plan = monitoring.plan_review(ad, reference, actor, outcome, at)
    restore_reference = None
    if plan.restore_body is not None:
        try:
            out = await commands.submit(ad, plan.restore_body, monitoring.REVIEW_SUBMITTER, now=at,
                                        idempotency_key=plan.idempotency_key)
        except IntegrityError:
            # Two identical requests raced (a double click): the other stored the order; take that one.
            out = await commands.submit(ad, plan.restore_body, monitoring.REVIEW_SUBMITTER, now=at,
                                        idempotency_key=plan.idempotency_key)
        if out.kind == "invalid" or out.order is None:
            refused = ReviewRefused(422, "restore_refused", "Återställandet kan inte beställas.", "outcome")
            refused.errors = [p.model_dump() for p in out.check.errors] or refused.errors
            raise refused
        restore_reference = out.order.reference
    return monitoring.record_review(ad, plan, at, restore_reference)
