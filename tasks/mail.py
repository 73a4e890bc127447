"""Email through an outbox: rendered and stored in the same transaction as the event, sent later with retries.

One message per recipient per event: the Message-ID is derived from (reference, event, recipient role)
and is unique in the outbox, so a retried or restarted flow cannot queue a second copy, and a message
that was accepted by the SMTP server is never sent again.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from models import personnummer
from models.regions import load_regions
from models.schemas import ORDER_TYPE_LABELS_SV
from models.status import LABELS_SV, OrderStatus
from models.tables import Order, OutboxMessage
from tasks import directory, failpoints, mailboxes
from tasks.database import session
from tasks.settings import ROOT, settings

if TYPE_CHECKING:
    from jinja2 import Environment

SUBJECTS = {
    "completed": "Beställning {ref} är genomförd",
    "rejected": "Beställning {ref} har avslagits",
    "cancelled": "Beställning {ref} har återkallats",
    "failed": "Beställning {ref} kunde inte verkställas",
}
# Instead of the masked number, which still tells the birth date: a protected identity is handled by phone.
PROTECTED_PATIENT = "Skyddade personuppgifter – hanteras per telefon"
LEASE = timedelta(minutes=2)


@lru_cache(maxsize=1)
def _env() -> Environment:
    # Imported on first use: a flow run's process imports this module but renders mail only at the end.
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    return Environment(loader=FileSystemLoader(ROOT / "forms" / "templates"),
                       autoescape=select_autoescape(["html", "html.j2"]), keep_trailing_newline=True)


@dataclass(frozen=True)
class Recipient:
    role: str     # head | orderer | on_call | escalation | support
    address: str


def message_id(reference: str, event: str, role: str) -> str:
    return f"<{reference}.{event}.{role}@restriction-orders.invalid>"


def context(s: Session, order: Order, subject: str, role: str) -> dict[str, str]:
    unit = directory.unit(s, order.care_unit_hsa_id)
    return {
        "reference": order.reference, "subject": subject, "recipient_role": role,
        "order_type_label": ORDER_TYPE_LABELS_SV.get(order.order_type, order.order_type),
        "unit_name": unit.name if unit else "", "unit_hsa_id": order.care_unit_hsa_id,
        "status_label": LABELS_SV[OrderStatus(order.status)],
        "patient_masked": PROTECTED_PATIENT if order.patient_protected else personnummer.mask(order.patient_pnr),
        "link": f"{settings().app_base_url}/bestallningar/{order.reference}",
    }


def enqueue(s: Session, order: Order, event: str, recipients: list[Recipient], now: datetime | None = None,
            template: str | None = None, extra: dict[str, str] | None = None, subject: str | None = None) -> int:
    """Queue one message per recipient for this event; returns how many were new.

    `event` must be unique per occasion (e.g. "overdue-1" for the first breach): it makes the Message-ID."""
    now = now or datetime.now(UTC)
    new = 0
    for r in recipients:
        mid = message_id(order.reference, event, r.role)
        if s.scalar(select(OutboxMessage.id).where(OutboxMessage.message_id == mid)) is not None:
            continue
        subj = subject or SUBJECTS.get(event, "Beställning {ref}").format(ref=order.reference)
        ctx = {**context(s, order, subj, r.role), **(extra or {})}
        name = template or event
        s.add(OutboxMessage(
            message_id=mid, order_reference=order.reference, event=event, recipient=r.address, subject=subj,
            body_text=_env().get_template(f"email/{name}.txt.j2").render(ctx),
            body_html=_env().get_template(f"email/{name}.html.j2").render(ctx),
            status="pending", attempts=0, created_at=now, next_attempt_at=now))
        new += 1
    s.flush()
    return new


def queue_confirmations(s: Session, order: Order, extra: dict[str, str] | None = None) -> int:
    """The emails the order's final status calls for: to the head of department and the orderer when it
    is completed, to the orderer when it is rejected or cancelled, to the orderer and the region's support
    queue when the registry refused it. Called in the transaction that sets the status, so a crash right
    after cannot lose them; queueing again adds nothing."""
    status = OrderStatus(order.status)
    if status == OrderStatus.COMPLETED:
        return enqueue(s, order, "completed", confirmation_recipients(s, order), extra=extra)
    orderer = [r for r in confirmation_recipients(s, order) if r.role == "orderer"]
    if status in (OrderStatus.REJECTED, OrderStatus.CANCELLED):
        return enqueue(s, order, status.value, orderer, extra=extra)
    if status == OrderStatus.FAILED:
        queue = mailboxes.optional(load_regions()[order.region], "support_queue_email")
        support = [Recipient("support", queue)] if queue else []
        return enqueue(s, order, "failed", [*orderer, *support], extra=extra)
    return 0


def confirmation_recipients(s: Session, order: Order) -> list[Recipient]:
    out: list[Recipient] = []
    unit = directory.unit(s, order.care_unit_hsa_id)
    head = directory.staff(s, unit.head_hsa_id) if unit and unit.head_hsa_id else None
    if head:
        out.append(Recipient("head", head.email))
    orderer = directory.staff(s, order.submitted_by)
    if orderer:
        out.append(Recipient("orderer", orderer.email))
    return out


def _build(m: OutboxMessage) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings().smtp_from
    msg["To"] = m.recipient
    msg["Subject"] = m.subject
    msg["Message-ID"] = m.message_id
    msg["Date"] = format_datetime(m.created_at)
    msg["X-Order-Reference"] = m.order_reference or ""
    msg.set_content(m.body_text)
    msg.add_alternative(m.body_html, subtype="html")
    return msg


def _claim(s: Session, mid: int, now: datetime) -> bool:
    """Take a lease on one message so two senders (app and flow) never send it twice at once."""
    res = s.execute(update(OutboxMessage).where(
        OutboxMessage.id == mid, OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now,
    ).values(status="sending", next_attempt_at=now + LEASE))
    s.commit()
    return bool(getattr(res, "rowcount", 0) == 1)


def deliver(reference: str | None = None, limit: int = 100, now: datetime | None = None) -> tuple[int, int]:
    """Send what is due in the outbox; returns (sent, failed). Failed ones stay queued with backoff."""
    now = now or datetime.now(UTC)
    cfg = settings()
    sent = failed = 0
    with session() as s:
        # A lease that ran out means a sender died mid-send: make it pending again.
        s.execute(update(OutboxMessage).where(OutboxMessage.status == "sending",
                                              OutboxMessage.next_attempt_at <= now).values(status="pending"))
        # No attempt limit: a confirmation to a head of department is never given up on. The backoff stops
        # growing at ten minutes and /healthz shows how long the oldest one has waited.
        q = select(OutboxMessage.id).where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
        if reference:
            q = q.where(or_(OutboxMessage.order_reference == reference))
        ids = list(s.scalars(q.order_by(OutboxMessage.id).limit(limit)))
        s.commit()
        for mid in ids:
            if not _claim(s, mid, now):
                continue
            m = s.get(OutboxMessage, mid)
            assert m is not None
            try:
                with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout) as smtp:
                    smtp.send_message(_build(m))
                    failpoints.hit("after-smtp-accept", m.order_reference)
            except (OSError, smtplib.SMTPException) as exc:
                m.attempts += 1
                m.status = "pending"
                m.last_error = type(exc).__name__
                m.next_attempt_at = now + timedelta(seconds=min(600, 5 * 2 ** min(m.attempts, 7)))
                failed += 1
            else:
                m.attempts += 1
                m.status = "sent"
                m.sent_at = datetime.now(UTC)
                sent += 1
            s.commit()
    return sent, failed


def backlog(now: datetime | None = None) -> tuple[int, float]:
    """(messages not yet sent, minutes the oldest of them has waited)."""
    now = now or datetime.now(UTC)
    with session() as s:
        count, oldest = s.execute(select(func.count(OutboxMessage.id), func.min(OutboxMessage.created_at))
                                  .where(OutboxMessage.status != "sent")).one()
    if not count or oldest is None:
        return 0, 0.0
    if oldest.tzinfo is None:  # min() over SQLite text can come back without the column's type
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), max(0.0, (now - oldest).total_seconds() / 60)
