"""Monitoring rules: when an order is overdue, which breach it is, when a review is due, what counts.

Pure functions, no I/O; every function that needs the time takes `now`. The database side is
`tasks/steps/monitoring.py`, the flows are `flows/sla.py` and `flows/review.py`.

Decisions taken here:
- An order is overdue when it has a due time, that time has passed and the order is not final
  (completed, rejected, cancelled, failed). `paper_fallback` is still open.
- A breach of a due time is a deviation (avvikelse). An urgent order is due at its callback deadline until
  the callback is recorded (then at the normal due time, tasks/steps/deadlines.callback_made); a missed callback is
  the escalation dispatcher's (tasks/steps/escalation.py): no overdue reminder and no second deviation here.
- A *breach* is one due time that passed. It is flagged once; a new due time that passes later is a new
  breach (breach 2, 3, ...). Which due times were flagged is read back from the `overdue` audit rows.
- A review period is identified by its review date (Stockholm calendar day). One reminder per period; an
  outcome (keep / restore) closes the period and sets the next review date.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from models.calendar import local
from models.status import FINAL, OrderStatus

OVERDUE_ACTION = "overdue"
REVIEW_REMINDER_ACTION = "review_reminder"
# The audit action each review outcome writes.
REVIEW_OUTCOME_ACTIONS = {"keep": "review_kept", "restore": "review_restore_ordered"}
# Order types a restore_access order can lift (it lifts seals and login locks only).
RESTORABLE_TYPES = ("seal_or_lock",)
EVENT_OVERDUE = "order.overdue"
# Fixed namespace: the same breach always gets the same Prefect event id, so a re-sent event is stored once.
_EVENT_NAMESPACE = uuid.UUID("6f1c9a52-3b0e-4d43-9c55-2f0a8f1d7e11")


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: give a timezone")
    return at.astimezone(UTC)


def is_open(status: str) -> bool:
    return OrderStatus(status) not in FINAL


def is_overdue(due_at: datetime | None, status: str, now: datetime) -> bool:
    return due_at is not None and is_open(status) and _utc(due_at) < _utc(now)


def minutes_late(due_at: datetime, now: datetime) -> int:
    return max(0, int((_utc(now) - _utc(due_at)).total_seconds() // 60))


def breach_key(due_at: datetime) -> str:
    """How a due time is written into the audit row (UTC, seconds), so it compares across databases."""
    return _utc(due_at).replace(microsecond=0).isoformat()


def breach_to_flag(due_at: datetime | None, status: str, now: datetime, flagged: Sequence[str],
                   callback_due_at: datetime | None = None) -> int | None:
    """The breach number to flag now, or None.

    `flagged` holds the breach keys of the due times already flagged for this order (any order). A due time
    that is the order's callback deadline is never flagged: the missed callback escalates instead."""
    if due_at is None or not is_overdue(due_at, status, now):
        return None
    if not records_deviation(due_at, callback_due_at):
        return None
    if breach_key(due_at) in flagged:
        return None
    return len(flagged) + 1


def records_deviation(due_at: datetime, callback_due_at: datetime | None) -> bool:
    """Whether a breach of `due_at` is a deviation for the SLA monitor to record.

    Not when the due time is the urgent callback deadline (an order urgent from submission): the promise
    there is the callback, and a missed callback is recorded by the escalation dispatcher
    (tasks/steps/escalation.py, kind `callback_missed`), so the same broken promise is never counted twice."""
    return callback_due_at is None or breach_key(callback_due_at) != breach_key(due_at)


def overdue_event_id(reference: str, due_at: datetime) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, f"{reference}/{EVENT_OVERDUE}/{breach_key(due_at)}")


def responsible_role(urgent: bool) -> str:
    """Who answers for a late order: the head of department, or for urgent orders the support queue."""
    return "support" if urgent else "head"


# --- re-assessment ---------------------------------------------------------------------------------------

def review_period(review_due_on: datetime) -> str:
    """The period's key: the review date as a Stockholm calendar day, e.g. `20271124`."""
    return f"{local(review_due_on):%Y%m%d}"


def review_event(review_due_on: datetime) -> str:
    """The outbox event (part of the Message-ID): one reminder per review period."""
    return f"review-{review_period(review_due_on)}"


def review_is_due(review_due_on: datetime | None, status: str, now: datetime) -> bool:
    return review_due_on is not None and OrderStatus(status) == OrderStatus.COMPLETED and \
        _utc(review_due_on) <= _utc(now)


def next_review(now: datetime, interval_days: int) -> datetime:
    if interval_days <= 0:
        raise ValueError("interval_days must be positive")
    return _utc(now) + timedelta(days=interval_days)


def restriction_lifted(actions: Iterable[str], restored: Iterable[Iterable[str]]) -> bool:
    """True when completed restore_access orders made after the restriction together lift all its actions."""
    wanted = set(actions)
    lifted: set[str] = set()
    for r in restored:
        lifted |= set(r)
    return bool(wanted) and wanted <= lifted


# --- counts for the dashboard ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CountRow:
    region: str
    status: str
    open: int
    overdue: int


def open_counts(rows: Iterable[tuple[str, str, datetime | None]], now: datetime) -> list[CountRow]:
    """(region, status, due_at) of orders -> open orders per region and status, with how many are overdue."""
    total: Counter[tuple[str, str]] = Counter()
    late: Counter[tuple[str, str]] = Counter()
    for region, status, due in rows:
        if not is_open(status):
            continue
        total[(region, status)] += 1
        if is_overdue(due, status, now):
            late[(region, status)] += 1
    order = {s.value: i for i, s in enumerate(OrderStatus)}
    keys = sorted(total, key=lambda k: (k[0], order.get(k[1], 99)))
    return [CountRow(r, s, total[(r, s)], late[(r, s)]) for r, s in keys]


def counts_table(counts: Sequence[CountRow], region_names: Mapping[str, str] | None = None,
                 status_labels: Mapping[str, str] | None = None) -> list[dict[str, str | int]]:
    """The `open-orders` artifact's rows (Swedish column names): per region and status, then a total row.
    Counts and codes only: no personal data, no references."""
    names, labels = region_names or {}, status_labels or {}
    rows: list[dict[str, str | int]] = [
        {"Region": names.get(c.region, c.region), "Status": labels.get(c.status, c.status), "Öppna": c.open,
         "Varav försenade": c.overdue} for c in counts]
    rows.append({"Region": "Alla", "Status": "Alla", "Öppna": sum(c.open for c in counts),
                 "Varav försenade": sum(c.overdue for c in counts)})
    return rows
