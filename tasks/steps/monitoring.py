"""Monitoring against the orders database: overdue orders, review reminders and outcomes, dashboard figures.

Plain functions with `now` injected (the flows in `flows/sla.py` and `flows/review.py` and the admin pages
call them; the tests call them with a FixedClock). The decision rules are in `models/sla.py`.

Once per breach, not once per run: an overdue order is flagged in ONE transaction that writes the audit row
`overdue` (whose detail names the breached due time), a Deviation row and the reminder emails (outbox
Message-IDs `<ref>.overdue-<n>.<role>@…` are unique). An urgent order's callback deadline is not flagged
here: tasks/steps/escalation.py escalates a missed callback and records it as `callback_missed`. The next run
reads the `overdue` audit rows back and skips due times already flagged; two monitors racing on the same order collide on the row lock (PostgreSQL)
or the unique Message-ID and one of them rolls back. No new column is needed.

The Prefect event is sent inside that transaction, before the commit, with an id derived from the order
and the breached due time: if the commit then fails, the next run sends the same event id again and the
Prefect server stores it once (events are deduplicated by id).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, not_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models import sla, swedish
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Deadline, Deviation, Order, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.gateway import access_state
from tasks.adapters.mail import Recipient
from tasks.steps.orders import NotFound, get

log = logging.getLogger(__name__)
SYSTEM = "system"
# Who stands behind an automatic restore_access order started from a review: the head's decision is in the
# audit row `review_restore_ordered`. The head cannot be the submitter, since the unit's head must approve
# the restore order and nobody approves an order they submitted (four eyes).
REVIEW_SUBMITTER = SYSTEM
OPEN_STATUSES = [s.value for s in OrderStatus if s not in FINAL]
CHUNK = 500  # references per IN (...) query

# --- overdue orders ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OverdueFlag:
    reference: str
    breach: int
    due_at: datetime
    minutes_late: int
    region: str
    urgent: bool
    status: str
    mails: int
    event_id: str


def overdue_query(now: datetime, region: str | None = None, status: str | None = None) -> Any:
    q = select(Order).where(Order.due_at.is_not(None), Order.due_at < now, Order.status.in_(OPEN_STATUSES))
    if region:
        q = q.where(Order.region == region)
    if status:
        q = q.where(Order.status == status)
    return q.order_by(Order.due_at, Order.id)


def flagged_keys(s: Session, references: Iterable[str]) -> dict[str, list[str]]:
    """Breach keys (due times) already flagged, per order reference, oldest first."""
    refs = list(references)
    out: dict[str, list[str]] = {r: [] for r in refs}
    for i in range(0, len(refs), CHUNK):
        rows = s.execute(select(AuditEvent.order_reference, AuditEvent.detail)
                         .where(AuditEvent.action == sla.OVERDUE_ACTION,
                                AuditEvent.order_reference.in_(refs[i:i + CHUNK]))
                         .order_by(AuditEvent.id))
        for ref, detail in rows:
            key = (detail or {}).get("due_at")
            if ref is not None and isinstance(key, str):
                out.setdefault(ref, []).append(key)
    return out


def overdue_recipients(ad: Adapters, s: Session, order: Order) -> list[Recipient]:
    """The responsible person (head of department; for urgent orders the region's support queue) and the
    region's support queue, each once."""
    queue = ad.mailbox(order.region, "support_queue_email")
    out: list[Recipient] = []
    if sla.responsible_role(order.urgent) == "head":
        unit = directory.unit(s, order.care_unit_hsa_id)
        head = directory.staff(s, unit.head_hsa_id) if unit and unit.head_hsa_id else None
        if head is not None:
            out.append(Recipient("head", head.email))
    if queue and queue not in {r.address for r in out}:
        out.append(Recipient("support", queue))
    return out


def lock_order(s: Session, reference: str) -> Order | None:
    """Load the order for a check-then-write: a racing writer waits here, and what this transaction reads
    next includes what the other one committed. PostgreSQL: a row lock (SELECT … FOR UPDATE). SQLite: the
    database's write lock taken up front (pysqlite would otherwise begin the transaction only at the
    first INSERT, after the checks)."""
    if s.get_bind().dialect.name == "sqlite":
        s.execute(text("BEGIN IMMEDIATE"))
    return s.scalar(select(Order).where(Order.reference == reference).with_for_update())


def _flag_one(ad: Adapters, s: Session, reference: str, now: datetime) -> OverdueFlag | None:
    order = lock_order(s, reference)
    if order is None or order.due_at is None:
        return None
    flagged = flagged_keys(s, [reference]).get(reference, [])
    breach = sla.breach_to_flag(order.due_at, order.status, now, flagged, order.callback_due_at)
    if breach is None:
        return None
    due = order.due_at
    late = sla.minutes_late(due, now)
    role = sla.responsible_role(order.urgent)
    event_id = sla.overdue_event_id(reference, due)
    deviation = sla.records_deviation(due, order.callback_due_at)
    audit.record(s, actor=SYSTEM, action=sla.OVERDUE_ACTION, order=order, from_status=order.status, at=now,
                 detail={"due_at": sla.breach_key(due), "breach": breach, "minutes_late": late,
                         "responsible": role, "event_id": str(event_id), "deviation": deviation})
    if deviation:
        s.add(Deviation(order_reference=reference, kind="overdue", minutes_late=late, at=now))
    # The deadline row of this due time (non-urgent orders have one) is now fired.
    s.execute(update(Deadline).where(Deadline.order_reference == reference, Deadline.kind == "due",
                                     Deadline.due_at == due, Deadline.fired_at.is_(None)).values(fired_at=now))
    subject = f"Försenad beställning {reference}" + (" (brådskande)" if order.urgent else "")
    sent = ad.mail.enqueue(s, order, f"overdue-{breach}", overdue_recipients(ad, s, order), now=now,
                           template="overdue", subject=subject,
                           extra={"due_text": swedish.when(due), "late_text": swedish.duration(late), "breach": str(breach),
                                  "urgent": "ja" if order.urgent else "", "link": ad.mail.link(reference)})
    s.flush()  # a racing monitor's duplicate Message-ID fails here, before anything is sent
    flag = OverdueFlag(reference, breach, due, late, order.region, order.urgent, order.status, sent, str(event_id))
    ad.events.emit(sla.EVENT_OVERDUE, event_resource(flag, order.order_type), payload=event_payload(flag),
                   id=event_id)
    return flag


def event_resource(flag: OverdueFlag, order_type: str) -> dict[str, str]:
    """The event's resource: the order reference and labels an automation can match. No personal data."""
    return {"prefect.resource.id": f"order.{flag.reference}", "prefect.resource.name": flag.reference,
            "order.region": flag.region, "order.status": flag.status, "order.type": order_type,
            "order.urgent": "true" if flag.urgent else "false"}


def event_payload(flag: OverdueFlag) -> dict[str, Any]:
    return {"breach": flag.breach, "due_at": sla.breach_key(flag.due_at), "minutes_late": flag.minutes_late}


def flag_overdue(ad: Adapters, now: datetime, *, references: Collection[str] | None = None,
                 max_flags: int = 500) -> list[OverdueFlag]:
    """Flag every order whose due time has passed and was not flagged yet (at most `max_flags` per run; the
    rest in the next run). Safe to run any time, often, and from several processes at once.
    `references` restricts the run to those orders."""
    q = select(Order.reference, Order.due_at, Order.status, Order.callback_due_at).where(
        Order.due_at.is_not(None), Order.due_at < now, Order.status.in_(OPEN_STATUSES))
    if references is not None:
        q = q.where(Order.reference.in_(list(references)))
    with ad.db.session() as s:
        # Every late order, flagged or not (light rows): a limit here could hide new breaches behind old ones.
        candidates = [(r, d, st, cb) for r, d, st, cb in s.execute(q.order_by(Order.due_at, Order.id))]
        done = flagged_keys(s, [c[0] for c in candidates])
    flags: list[OverdueFlag] = []
    for ref, due, status, callback_due in candidates:
        if sla.breach_to_flag(due, status, now, done.get(ref, []), callback_due) is None:
            continue  # flagged by an earlier run, or the callback deadline (escalation's)
        if len(flags) >= max_flags:
            break
        try:
            with ad.db.session() as s:
                flag = _flag_one(ad, s, ref, now)
        except SQLAlchemyError as exc:  # this order only; the next run tries again
            log.warning("overdue flag for %s not recorded: %s", ref, type(exc).__name__)
            continue
        if flag is not None:
            flags.append(flag)
    return flags


# --- dashboard figures --------------------------------------------------------------------------------------

def open_order_counts(s: Session, now: datetime, region: str | None = None,
                      status: str | None = None) -> list[sla.CountRow]:
    q = select(Order.region, Order.status, Order.due_at).where(Order.status.in_(OPEN_STATUSES))
    if region:
        q = q.where(Order.region == region)
    if status:
        q = q.where(Order.status == status)
    return sla.open_counts(((r, st, d) for r, st, d in s.execute(q)), now)


def overdue_orders(s: Session, now: datetime, region: str | None = None, status: str | None = None,
                   limit: int = 500) -> list[Order]:
    return list(s.scalars(overdue_query(now, region, status).limit(limit)))


EXPORT_BATCH = 1000  # rows fetched per round trip when exporting


@dataclass(frozen=True)
class ExportRow:
    """An order as the CSV export writes it: no personal number, no free text (they are not even read)."""
    reference: str
    order_type: str
    region: str
    unit_hsa_id: str
    status: str
    urgent: bool
    created_at: datetime
    due_at: datetime | None


def _export_filter(q: Any, now: datetime, region: str | None, status: str | None, overdue: bool | None) -> Any:
    if region:
        q = q.where(Order.region == region)
    if status:
        q = q.where(Order.status == status)
    if overdue is not None:
        # sla.is_overdue in SQL; a NULL due time makes the conjunction false, never unknown.
        late = and_(Order.due_at.is_not(None), Order.due_at < now, Order.status.in_(OPEN_STATUSES))
        q = q.where(late if overdue else not_(late))
    return q


def export_count(s: Session, now: datetime, region: str | None = None, status: str | None = None,
                 overdue: bool | None = None) -> int:
    q = _export_filter(select(func.count()).select_from(Order), now, region, status, overdue)
    return int(s.scalar(q) or 0)


def orders_for_export(s: Session, now: datetime, region: str | None = None, status: str | None = None,
                      overdue: bool | None = None, batch: int = EXPORT_BATCH) -> Iterator[ExportRow]:
    """Every order the filters select, newest first, without a limit: all filters are in SQL and the rows
    come `batch` at a time (a server-side cursor on PostgreSQL), so memory stays flat however many there are."""
    q = _export_filter(select(Order.reference, Order.order_type, Order.region, Order.care_unit_hsa_id, Order.status,
                              Order.urgent, Order.created_at, Order.due_at), now, region, status, overdue)
    q = q.order_by(Order.created_at.desc(), Order.id.desc()).execution_options(yield_per=batch)
    for row in s.execute(q):
        yield ExportRow(*row)


@dataclass(frozen=True)
class DeviationRow:
    reference: str
    kind: str
    minutes_late: int
    at: datetime
    region: str
    unit_hsa_id: str
    status: str


def deviation_count(s: Session, region: str | None = None) -> int:
    q = select(func.count()).select_from(Deviation).join(Order, Order.reference == Deviation.order_reference)
    if region:
        q = q.where(Order.region == region)
    return int(s.scalar(q) or 0)


def deviations(s: Session, region: str | None = None, limit: int = 200) -> list[DeviationRow]:
    q = select(Deviation, Order).join(Order, Order.reference == Deviation.order_reference)
    if region:
        q = q.where(Order.region == region)
    rows = s.execute(q.order_by(Deviation.at.desc(), Deviation.id.desc()).limit(limit))
    return [DeviationRow(d.order_reference, d.kind, d.minutes_late, d.at, o.region, o.care_unit_hsa_id, o.status)
            for d, o in rows]


# --- re-assessment -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReviewDue:
    reference: str
    order_type: str
    region: str
    unit_hsa_id: str
    review_due_on: datetime
    period: str
    reminded: bool


def _restored_actions(s: Session, orders_: list[Order]) -> dict[str, list[list[str]]]:
    """Per restriction order: the actions of completed restore_access orders for the same patient made later."""
    pnrs = {o.patient_pnr for o in orders_ if o.order_type in sla.RESTORABLE_TYPES}
    if not pnrs:
        return {}
    restores = list(s.execute(select(Order.patient_pnr, Order.created_at, Order.actions).where(
        Order.order_type == "restore_access", Order.status == OrderStatus.COMPLETED.value,
        Order.patient_pnr.in_(pnrs))))
    out: dict[str, list[list[str]]] = {}
    for o in orders_:
        out[o.reference] = [list(a or []) for p, created, a in restores
                            if p == o.patient_pnr and created > o.created_at]
    return out


def _reminded_periods(s: Session, references: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {r: set() for r in references}
    for i in range(0, len(references), CHUNK):
        for ref, detail in s.execute(select(AuditEvent.order_reference, AuditEvent.detail).where(
                AuditEvent.action == sla.REVIEW_REMINDER_ACTION,
                AuditEvent.order_reference.in_(references[i:i + CHUNK]))):
            period = (detail or {}).get("period")
            if ref is not None and isinstance(period, str):
                out.setdefault(ref, set()).add(period)
    return out


def reviews_due(s: Session, now: datetime, region: str | None = None,
                references: Collection[str] | None = None,
                unit_hsa_ids: Collection[str] | None = None) -> list[ReviewDue]:
    """Executed restrictions whose review date has come and whose restriction is still in force."""
    q = select(Order).where(Order.status == OrderStatus.COMPLETED.value, Order.review_due_on.is_not(None),
                            Order.review_due_on <= now)
    if region:
        q = q.where(Order.region == region)
    if references is not None:
        q = q.where(Order.reference.in_(list(references)))
    if unit_hsa_ids is not None:
        q = q.where(Order.care_unit_hsa_id.in_(list(unit_hsa_ids)))
    rows = list(s.scalars(q.order_by(Order.review_due_on, Order.id)))
    restored = _restored_actions(s, rows)
    reminded = _reminded_periods(s, [o.reference for o in rows])
    out = []
    for o in rows:
        assert o.review_due_on is not None
        if o.order_type in sla.RESTORABLE_TYPES and sla.restriction_lifted(o.actions or [], restored.get(o.reference, [])):
            continue
        period = sla.review_period(o.review_due_on)
        out.append(ReviewDue(o.reference, o.order_type, o.region, o.care_unit_hsa_id, o.review_due_on, period,
                             period in reminded.get(o.reference, set())))
    return out


def review_recipients(ad: Adapters, s: Session, order: Order) -> list[Recipient]:
    """The head of department of the ordering unit; the region's support queue if the unit has none."""
    unit = directory.unit(s, order.care_unit_hsa_id)
    head = directory.staff(s, unit.head_hsa_id) if unit and unit.head_hsa_id else None
    if head is not None:
        return [Recipient("head", head.email)]
    queue = ad.mailbox(order.region, "support_queue_email")
    return [Recipient("support", queue)] if queue else []


def send_review_reminders(ad: Adapters, now: datetime, *, references: Collection[str] | None = None) -> list[str]:
    """One email per review period to the head of department; returns the references reminded now."""
    with ad.db.session() as s:
        due = [r for r in reviews_due(s, now, references=references) if not r.reminded]
    reminded: list[str] = []
    for r in due:
        with ad.db.session() as s:
            order = lock_order(s, r.reference)
            if order is None or order.review_due_on is None or \
                    not sla.review_is_due(order.review_due_on, order.status, now):
                continue
            period = sla.review_period(order.review_due_on)
            if period in _reminded_periods(s, [order.reference]).get(order.reference, set()):
                continue
            sent = ad.mail.enqueue(
                s, order, sla.review_event(order.review_due_on), review_recipients(ad, s, order), now=now,
                template="review_due", subject=f"Dags för omprövning av {order.reference}",
                extra={"review_date_text": swedish.day(order.review_due_on),
                       "review_link": f"{ad.mail.base_url}/omprovningar", "link": ad.mail.link(order.reference)})
            audit.record(s, actor=SYSTEM, action=sla.REVIEW_REMINDER_ACTION, order=order, at=now,
                         detail={"period": period, "mails": sent})
            reminded.append(order.reference)
    return reminded


class ReviewRefused(Exception):
    """The outcome cannot be recorded: `status` is the HTTP status (403, 409, 422), `code` the error code."""

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.errors: list[dict[str, str]] = [{"field": field, "code": code, "message": message}]


def is_unit_head(person: Staff | None, order: Order, unit_head: str | None) -> bool:
    return directory.has_role(person, "head_of_department") and person is not None and (
        person.hsa_id == unit_head or person.unit_hsa_id == order.care_unit_hsa_id)


@dataclass(frozen=True)
class ReviewPlan:
    reference: str
    outcome: str
    actor: str
    period: str
    review_due_on: datetime
    interval_days: int
    restore_body: dict[str, Any] | None = None
    idempotency_key: str | None = None


def plan_review(ad: Adapters, reference: str, actor: str, outcome: str, now: datetime) -> ReviewPlan:
    """Check that `actor` may record `outcome` for the order's current review now; what to do if so.

    Raises NotFound, or ReviewRefused (403 not the unit's head, 409 no review due, 422 bad outcome)."""
    if outcome not in sla.REVIEW_OUTCOME_ACTIONS:
        raise ReviewRefused(422, "invalid_value", "Utfallet ska vara keep eller restore.", "outcome")
    with ad.db.session() as s:
        order = get(s, reference)
        unit = directory.unit(s, order.care_unit_hsa_id)
        if not is_unit_head(directory.staff(s, actor), order, unit.head_hsa_id if unit else None):
            raise ReviewRefused(403, "wrong_role",
                                "Endast verksamhetschefen för den beställande vårdenheten kan registrera omprövning.")
        if order.review_due_on is None or order.status != OrderStatus.COMPLETED:
            raise ReviewRefused(409, "no_review", "Beställningen har ingen omprövning.")
        if not sla.review_is_due(order.review_due_on, order.status, now):
            raise ReviewRefused(409, "review_not_due",
                                f"Omprövningen är inte aktuell förrän {swedish.day(order.review_due_on)}.")
        period = sla.review_period(order.review_due_on)
        interval = ad.region(order.region).review_interval_days
        if outcome == "keep":
            return ReviewPlan(order.reference, outcome, actor, period, order.review_due_on, interval)
        if order.order_type not in sla.RESTORABLE_TYPES:
            raise ReviewRefused(422, "restore_not_available",
                                "Den här typen av begränsning hävs inte med en beställning om återställande.",
                                "outcome")
        state = access_state(s, order.patient_pnr)
        in_force = [a for a in (order.actions or []) if state.restriction_for(a) is not None]
        body = {
            "order_type": "restore_access", "initiative": "care",
            # Only what is still in force; if nothing is, the rules answer `nothing_to_restore`.
            "actions": in_force or list(order.actions or []),
            "patient_personal_number": order.patient_pnr,
            "patient_protected_identity": order.patient_protected,
            "urgent": False,
            "reason": f"Omprövning av {order.reference}: verksamhetschefen har beslutat att begränsningen ska hävas.",
            "care_unit_hsa_id": order.care_unit_hsa_id, "region": order.region,
        }
        return ReviewPlan(order.reference, outcome, actor, period, order.review_due_on, interval, body,
                          f"review:{order.reference}:{period}")


@dataclass(frozen=True)
class ReviewResult:
    reference: str
    outcome: str
    period: str
    review_due_on: datetime
    restore_reference: str | None = None


def record_review(ad: Adapters, plan: ReviewPlan, now: datetime,
                  restore_reference: str | None = None) -> ReviewResult:
    """Write the outcome: the audit row and the next review date (now + the region's interval)."""
    next_date = sla.next_review(now, plan.interval_days)
    with ad.db.session() as s:
        order = lock_order(s, plan.reference)
        if order is None:
            raise NotFound(plan.reference)
        if order.review_due_on is None or sla.review_period(order.review_due_on) != plan.period:
            # Recorded by someone else in the meantime (a double click): the review is no longer due.
            raise ReviewRefused(409, "review_not_due", "Omprövningen är redan registrerad.")
        order.review_due_on = next_date
        order.updated_at = now
        detail: dict[str, Any] = {"outcome": plan.outcome, "period": plan.period,
                                  "next_review": sla.breach_key(next_date)}
        if restore_reference:
            detail["restore_reference"] = restore_reference
        audit.record(s, actor=plan.actor, action=sla.REVIEW_OUTCOME_ACTIONS[plan.outcome], order=order, at=now,
                     detail=detail)
        if restore_reference:
            restore = s.scalar(select(Order).where(Order.reference == restore_reference))
            if restore is not None:
                audit.record(s, actor=plan.actor, action="started_by_review", order=restore, at=now,
                             detail={"review_of": plan.reference, "period": plan.period})
    return ReviewResult(plan.reference, plan.outcome, plan.period, next_date, restore_reference)

