"""Paper fallback (reservrutin, DOMAIN.md §3.5): what happens when an order cannot be executed digitally.

When the execution system is still unreachable after the execute step's bounded retries, the routine
moves the order to `paper_fallback` and runs `check_and_tell` (flows/order.py). It

1. makes sure the order's pre-filled paper form can be produced: it renders the PDF once and throws it
   away (the PDF holds personal data; the orderer prints it from the app, `GET /api/orders/{ref}/paper.pdf`,
   which renders it again from the orders database);
2. emails the orderer once per fallback, with no personal data and no attachment: log in, print, sign,
   send by internal mail to the region's postal route, and phone support too when the order is urgent.

Both steps are idempotent, so they can run again at any time. `sweep()` (housekeeping and the embedded
loop) repairs a run that died between the fallback and the email, and, once the execution system answers
again, resumes digitally every order whose signed paper form has not arrived
(tasks/steps/paper_orders.py::resume_when_back), so the email's promise holds without anyone pressing a
button. An order whose signed form did arrive never comes back here: it goes to the manual execution step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.calendar import local
from models.contacts import postal_lines, urgent_call_instruction
from models.routine import StagePlan
from models.status import OrderStatus
from models.tables import AuditEvent, Order, OutboxMessage
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.mail import Recipient
from tasks.adapters.paper import paper_order, paper_region, render_pdf
from tasks.steps.orders import get
from tasks.steps.paper_orders import Probe, fallback_occasions, resume_when_back

log = logging.getLogger(__name__)
SYSTEM = "system"
UNNOTIFIED = "paper_fallback_unnotified"
TEMPLATE = "paper_fallback"
SUBJECT = "Beställning {ref}: skriv ut pappersblanketten (reservrutin)"


def event_name(occasion: int) -> str:
    """The outbox event of one fallback: its Message-ID makes the email unique per order and occasion."""
    return f"paper_fallback-{occasion}"


def _already(ad: Adapters, reference: str, action: str, occasion: int) -> bool:
    with ad.db.session() as s:
        rows = s.scalars(select(AuditEvent.detail).where(AuditEvent.order_reference == reference,
                                                         AuditEvent.action == action))
        return any((d or {}).get("occasion") == occasion for d in rows)


def check_paper_form(ad: Adapters, reference: str) -> int:
    """Render the order's pre-filled paper form once to prove it can be printed; returns the fallback
    occasion (0 when the order is no longer in `paper_fallback`). The PDF is not kept anywhere."""
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK:
            return 0
        occasion = fallback_occasions(s, reference)
        filled = paper_order(s, order)
    if _already(ad, reference, "paper_form_checked", occasion):
        return occasion
    pdf = render_pdf(order.order_type, paper_region(ad.region(order.region), demo=ad.settings.demo), filled)
    if not (pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]):
        raise RuntimeError(f"paper form for {reference} is not a complete PDF")
    with ad.db.session() as s:
        audit.record(s, actor=SYSTEM, action="paper_form_checked", order=get(s, reference), channel="flow", at=ad.now(),
                     detail={"occasion": occasion, "bytes": len(pdf)})
    log.info("%s: paper form renders (%d bytes)", reference, len(pdf))
    return occasion


def _recipients(ad: Adapters, s: Session, order: Order) -> list[Recipient]:
    orderer = directory.staff(s, order.submitted_by)
    if orderer is not None:
        return [Recipient("orderer", orderer.email)]
    # The orderer has left the directory: the region's support queue takes the paper routine instead.
    queue = ad.mailbox(order.region, "support_queue_email")
    return [Recipient("support", queue)] if queue else []


def _told_before(s: Session, reference: str) -> bool:
    """The orderer already has the paper instructions, and the order went back to digital by itself
    (the sweep) rather than by a person: falling back again changes nothing for them, so they are not
    asked to print a second time (a system that keeps failing would otherwise mail them again and again)."""
    last_resume = s.scalar(select(AuditEvent).where(AuditEvent.order_reference == reference,
                                                    AuditEvent.action == "resumed_digital")
                           .order_by(AuditEvent.id.desc()).limit(1))
    told = s.scalar(select(AuditEvent.id).where(AuditEvent.order_reference == reference,
                                                AuditEvent.action == "paper_fallback_notified").limit(1))
    return last_resume is not None and last_resume.actor == SYSTEM and told is not None


def _mail_context(ad: Adapters, order: Order) -> dict[str, str]:
    region = ad.region(order.region)
    return {
        # As on the paper form: the region's sourced route, number and callback promise, or "Ej inställt".
        "postal_route": ", ".join(postal_lines(region)),
        "urgent_call": urgent_call_instruction(region),
        "urgent": "ja" if order.urgent else "",
        "needs_head_signature": "ja" if StagePlan.from_json(order.stage_plan).required("approval")
        or not order.stage_plan else "",
        "pdf_link": f"{ad.mail.base_url}/api/orders/{order.reference}/paper.pdf",
        "fallback_at": f"{local(ad.now()):%Y-%m-%d %H:%M}",
    }


def notify_orderer(ad: Adapters, reference: str, occasion: int) -> int:
    """Queue the orderer's email for this fallback (once: the Message-ID is unique), then try to send it
    now; the housekeeping loop sends it later if the SMTP server is down. Returns how many were queued."""
    if occasion <= 0:
        return 0
    with ad.db.session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK or fallback_occasions(s, reference) != occasion:
            return 0
        if _told_before(s, reference):
            if not _already(ad, reference, UNNOTIFIED, occasion):
                audit.record(s, actor=SYSTEM, action=UNNOTIFIED, order=order, channel="flow", at=ad.now(),
                             detail={"occasion": occasion, "why": "told_before"})
            return 0
        recipients = _recipients(ad, s, order)
        new = ad.mail.enqueue(s, order, event_name(occasion), recipients, template=TEMPLATE,
                              extra=_mail_context(ad, order), subject=SUBJECT.format(ref=order.reference))
        if new:
            audit.record(s, actor=SYSTEM, action="paper_fallback_notified", order=order, channel="flow", at=ad.now(),
                         detail={"occasion": occasion, "recipients": [r.role for r in recipients]})
        elif not recipients and not _already(ad, reference, UNNOTIFIED, occasion):
            audit.record(s, actor=SYSTEM, action=UNNOTIFIED, order=order, channel="flow", at=ad.now(),
                         detail={"occasion": occasion, "why": "no_recipient"})
    ad.mail.deliver(reference)
    return new


def check_and_tell(ad: Adapters, reference: str) -> int:
    """Both steps for one order; returns the fallback occasion handled (0: not in paper_fallback)."""
    occasion = check_paper_form(ad, reference)
    if occasion:
        notify_orderer(ad, reference, occasion)
    return occasion


# The run that falls back tells the orderer within seconds; one that has not after this long died in between.
# Repairing sooner would race the live run (two renders, two audit rows, an outbox insert conflict).
REPAIR_AFTER_S = 60.0


def untold(ad: Adapters, now: datetime | None = None) -> list[str]:
    """Orders that fell back to paper over a minute ago and whose current fallback has no email in the
    outbox yet (and that were not found to have nobody to tell)."""
    before = (now or ad.now()) - timedelta(seconds=REPAIR_AFTER_S)
    with ad.db.session() as s:
        refs = list(s.scalars(select(Order.reference).where(Order.status == OrderStatus.PAPER_FALLBACK.value)
                              .order_by(Order.id)))
        out = []
        for ref in refs:
            fell_back = s.scalar(select(func.max(AuditEvent.at)).where(
                AuditEvent.order_reference == ref, AuditEvent.to_status == OrderStatus.PAPER_FALLBACK.value))
            if fell_back is not None and fell_back > before:
                continue
            occasion = fallback_occasions(s, ref)
            prefix = f"<{ref}.{event_name(occasion)}."
            if s.scalar(select(OutboxMessage.id).where(OutboxMessage.message_id.startswith(prefix))) is None \
                    and not _already(ad, ref, UNNOTIFIED, occasion):
                out.append(ref)
        return out


RETRY_FAILED_S = 60.0


@dataclass
class Sweeper:
    """What a process that sweeps in a loop remembers between rounds: an order whose paper form fails to
    render is tried again a minute later, not every round; the execution system's probe backs off."""
    failed_until: dict[str, float] = field(default_factory=dict)
    probe: Probe = field(default_factory=Probe)

    def tell_untold(self, ad: Adapters, now: datetime | None = None) -> list[str]:
        """An order whose run died between the fallback and the email still gets its email. Returns the
        references whose orderer was told now."""
        done = []
        for ref in untold(ad, now):
            if self.failed_until.get(ref, 0.0) > time.monotonic():
                continue
            try:
                occasion = check_paper_form(ad, ref)
                if occasion and notify_orderer(ad, ref, occasion):
                    done.append(ref)
            except Exception as exc:
                self.failed_until[ref] = time.monotonic() + RETRY_FAILED_S
                log.warning("%s: paper fallback repair failed: %s", ref, type(exc).__name__)
        return done

    async def sweep(self, ad: Adapters, now: datetime | None = None) -> dict[str, int]:
        """The paper routine's share of housekeeping: tell orderers who were not told, and hand orders whose
        paper form has not arrived back to the digital route once the execution system answers again."""
        told = self.tell_untold(ad, now)
        resumed = await resume_when_back(ad, now, self.probe)
        return {"paper_told": len(told), "paper_resumed": len(resumed)}
