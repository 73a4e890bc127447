"""The immediate page for an urgent order: on-call support out of office hours, the support queue in them.

`page_order(reference, now)` is called right after an urgent order is stored (flows/commands.py::submit)
and when on-call support makes an existing order urgent (flows/urgent.py). It does not wait for Prefect
or for a poll: the page is queued in the outbox in the same transaction as its audit record and sent to
the SMTP server at once, in the caller's process. Should that send fail, the message stays queued and
the housekeeping loop retries it; should the process die before the page was even queued,
`page_unpaged(now)` (housekeeping) queues it.

Who gets it is decided by the time the callback clock started (submission, or the moment the order was
made urgent), with the urgent coverage of the order's region (models/coverage.py): every minute of the week
has one receiver, on-call (Kalmar 17:00–07:00 on working days, all day on non-working days; Östergötland
always) → the region's on-call address, or office-hours support (Kalmar 07:00–17:00 on working days) → the
top of the region's support queue, with the same deadline.

Beside the email there can be more notifiers (SMS gateway, chat, pager: `ad.notifiers`, see
tasks/adapters/notifiers.py). They are called once per page, after the email, and their failure never
stops the email.

A page carries the reference, order type, care unit, status and callback deadline, and the masked
personal number: no personal data, no free text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.calendar import local
from models.contacts import promise, staff_callback_line
from models.coverage import receiver_at
from models.regions import NO_PROMISE, RegionSettings
from models.schemas import ORDER_TYPE_LABELS_SV
from models.status import FINAL, OrderStatus
from models.tables import Deadline, Order, OutboxMessage
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.mail import Recipient
from tasks.adapters.notifiers import Notifier
from tasks.steps.orders import get

log = logging.getLogger(__name__)

Target = Literal["on_call", "support_queue"]
# (outbox event, recipient role, template) per target; the Message-ID made from them keeps a page single.
ROUTES: dict[str, tuple[str, str, str]] = {
    "on_call": ("paged", "on_call", "paged"),
    "support_queue": ("support-queue", "support", "support_queue"),
}
SUBJECTS = {
    "on_call": "BRÅDSKANDE {ref}: ring upp beställaren senast kl. {hhmm}",
    "support_queue": "BRÅDSKANDE {ref} överst i supportkön: ring upp senast kl. {hhmm}",
}
# A region that promises no callback (its urgent line answers at once): nobody is asked to call back.
SUBJECTS_NO_PROMISE = {
    "on_call": "BRÅDSKANDE {ref}: registrera kontakten med beställaren senast kl. {hhmm}",
    "support_queue": "BRÅDSKANDE {ref} överst i supportkön: registrera kontakten senast kl. {hhmm}",
}


def when_local(at: datetime) -> str:
    """`2026-12-24 kl. 17.30 CET`: Swedish time with the zone, which tells the two 02.15s of October apart."""
    t = local(at)
    return f"{t:%Y-%m-%d} kl. {t:%H.%M} {t.tzname()}"


@dataclass(frozen=True)
class Page:
    """What a notifier may say: no personal data."""
    reference: str
    region: str
    region_name: str
    target: Target
    address: str                 # the mailbox of the target (on-call or support queue)
    order_type: str
    order_type_label: str
    unit_hsa_id: str
    unit_name: str
    status: str
    clock_started_at: datetime
    callback_due_at: datetime
    callback_minutes: int
    now: datetime
    callback_line: str = ""      # the instruction in the region's own terms (models/contacts.py)
    no_promise: bool = False     # the region promises no callback

    def public(self) -> dict[str, Any]:
        """The JSON a webhook gets."""
        d = asdict(self)
        d.pop("now")
        d.pop("address")
        d.pop("callback_line")
        for k in ("clock_started_at", "callback_due_at"):
            d[k] = local(d[k]).isoformat()
        return {"event": "order.urgent.paged", **d}


def _enqueue_email(ad: Adapters, s: Session, order: Order, page: Page) -> bool:
    """Queue the page in the caller's transaction; False when it was queued before (same Message-ID)."""
    event, role, template = ROUTES[page.target]
    subjects = SUBJECTS_NO_PROMISE if page.no_promise else SUBJECTS
    subject = subjects[page.target].format(ref=page.reference, hhmm=f"{local(page.callback_due_at):%H.%M}")
    extra = {"callback_due_local": when_local(page.callback_due_at),
             "clock_started_local": when_local(page.clock_started_at),
             "callback_minutes": str(page.callback_minutes), "region_name": page.region_name,
             "callback_line": page.callback_line, "waits_for": "kontakt" if page.no_promise else "återuppringning"}
    return ad.mail.enqueue(s, order, event, [Recipient(role, page.address)], now=page.now,
                           template=template, extra=extra, subject=subject) > 0


def _send_email(ad: Adapters, page: Page) -> bool:
    """Hand the queued page to the SMTP server now (not when the next housekeeping round runs); True when
    it has been accepted (now or before)."""
    ad.mail.deliver(page.reference, now=max(page.now, ad.now()))
    event, role, _ = ROUTES[page.target]
    return ad.mail.status_of(page.reference, event, role) == "sent"


@dataclass(frozen=True)
class PageResult:
    reference: str
    target: Target
    address: str
    callback_due_at: datetime
    new: bool                    # False: this page had been queued before (a repeat call does nothing twice)
    delivered: bool              # accepted by the SMTP server
    notified: dict[str, bool]    # extra notifiers


def target_for(started: datetime, region: RegionSettings) -> Target:
    """Who receives the page: the region's urgent coverage at the minute the callback clock started."""
    return "on_call" if receiver_at(started, region.urgent_coverage) == "on_call" else "support_queue"


def clock_started(order: Order, region: RegionSettings) -> datetime:
    """When the callback clock started: submission, or the moment the order was made urgent."""
    assert order.callback_due_at is not None
    # Elapsed minutes, so in UTC: in Stockholm wall-clock time the subtraction is an hour off when the
    # deadline falls just after a DST change (the database gives UTC, a caller may give Stockholm time).
    due = order.callback_due_at
    return (due.astimezone(UTC) - timedelta(minutes=region.callback_deadline_minutes)).astimezone(due.tzinfo)


def build_page(ad: Adapters, s: Session, order: Order, now: datetime) -> Page:
    region = ad.region(order.region)
    started = clock_started(order, region)
    target = target_for(started, region)
    unit = directory.unit(s, order.care_unit_hsa_id)
    assert order.callback_due_at is not None
    return Page(reference=order.reference, region=order.region, region_name=region.name, target=target,
                address=ad.required_mailbox(order.region, "on_call_email" if target == "on_call"
                                            else "support_queue_email"),
                order_type=order.order_type,
                order_type_label=ORDER_TYPE_LABELS_SV.get(order.order_type, order.order_type),
                unit_hsa_id=order.care_unit_hsa_id, unit_name=unit.name if unit else "", status=order.status,
                clock_started_at=started, callback_due_at=order.callback_due_at,
                callback_minutes=region.callback_deadline_minutes, now=now,
                callback_line=staff_callback_line(region, when_local(order.callback_due_at), when_local(started)),
                no_promise=promise(region) == NO_PROMISE)


def _needs_page(order: Order) -> bool:
    return (order.urgent and order.callback_due_at is not None and order.callback_at is None
            and OrderStatus(order.status) not in FINAL)


def page_order(ad: Adapters, reference: str, now: datetime, *, notifiers: Sequence[Notifier] | None = None,
               actor: str = "system") -> PageResult | None:
    """Page for an urgent order now. Idempotent: a second call sends nothing new. None when there is
    nothing to page (not urgent, callback already made, order ended)."""
    for attempt in (1, 2):
        try:
            with ad.db.session() as s:
                order = get(s, reference)
                if not _needs_page(order):
                    return None
                page = build_page(ad, s, order, now)
                new = _enqueue_email(ad, s, order, page)
                if new:
                    audit.record(s, actor=actor, action="urgent_paged", order=order, at=now,
                                 detail={"target": page.target, "callback_due_at": page.callback_due_at.isoformat()})
            break
        except IntegrityError:  # a concurrent caller queued the same page first: it is there now
            if attempt == 2:
                raise
    delivered = _send_email(ad, page)
    notified: dict[str, bool] = {}
    if new:
        for n in (ad.notifiers if notifiers is None else notifiers):
            try:
                notified[n.name] = n.notify(page.public())
            except Exception as exc:  # a broken extra channel must never stop the email page
                log.warning("notifier %s failed for %s: %s", n.name, reference, type(exc).__name__)
                notified[n.name] = False
    log.info("urgent %s paged to %s (new=%s, delivered=%s)", reference, page.target, new, delivered)
    return PageResult(reference, page.target, page.address, page.callback_due_at, new, delivered, notified)


def page_unpaged(ad: Adapters, now: datetime, limit: int = 100) -> list[str]:
    """Housekeeping: page every urgent order whose clock runs and whose page was never queued (the process
    died between storing the order and queuing its page, or an order arrived by another route)."""
    events = [e for e, _, _ in ROUTES.values()]
    queued = select(OutboxMessage.id).where(OutboxMessage.order_reference == Order.reference,
                                            OutboxMessage.event.in_(events)).exists()
    with ad.db.session() as s:
        refs = list(s.scalars(
            select(Order.reference).join(Deadline, Deadline.order_reference == Order.reference)
            .where(Order.urgent.is_(True), Order.callback_at.is_(None), Order.created_at <= now,
                   Deadline.kind == "callback", Deadline.met_at.is_(None),
                   Order.status.not_in([str(x) for x in FINAL]), ~queued)
            .distinct().order_by(Order.reference).limit(limit)))
    out = []
    for ref in refs:
        try:
            if page_order(ad, ref, now) is not None:
                out.append(ref)
        except Exception as exc:
            log.warning("page sweep for %s failed: %s", ref, type(exc).__name__)
    return out


def page_safely(ad: Adapters, reference: str, now: datetime) -> PageResult | None:
    """`page_order` for callers that must not fail because of it (submit): a page that could not even be
    queued is logged and left to `page_unpaged` in the next housekeeping round."""
    try:
        return page_order(ad, reference, now)
    except Exception as exc:
        log.error("page for urgent %s not queued now: %s", reference, type(exc).__name__)
        return None
