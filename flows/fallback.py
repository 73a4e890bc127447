"""Paper fallback (reservrutin, DOMAIN.md §3.5): what happens when an order cannot be executed digitally.

When the execution system is still unreachable after the execute task's bounded retries, the routine
moves the order to `paper_fallback` and runs this flow as a subflow (flows/routine.py::execution). It

1. makes sure the order's pre-filled paper form can be produced: it renders the PDF once and throws it
   away (the PDF holds personal data; the orderer prints it from the app, `GET /api/orders/{ref}/paper.pdf`,
   which renders it again from the orders database);
2. emails the orderer once per fallback, with no personal data and no attachment: log in, print, sign,
   send by internal mail to the region's postal route, and phone support too when the order is urgent.

Both steps are idempotent, so the flow can be run again at any time. Without a reference it sweeps every
order that fell back over a minute ago and whose orderer has not been told yet (the deployment can run it
on a schedule, to repair a run that died between the fallback and the email).

`resume_digital(reference, actor)`: when the execution system is back, support puts the order back to the
stage it was at and a new run completes it digitally. The order, its decisions and history are kept.

`sweep()`: the housekeeping flow and the embedded loop run the repair above and, once the execution
system answers again, resume digitally every order whose signed paper form has not arrived
(tasks/paper_orders.py::resume_when_back), so the email's promise holds without anyone pressing a button.
An order whose signed form did arrive never comes back here: it goes to the manual execution step.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from sqlalchemy import func, select

from models.calendar import local
from models.contacts import postal_lines, urgent_call_instruction
from models.regions import load_regions
from models.status import OrderStatus
from models.tables import AuditEvent, Order, OutboxMessage
from tasks import audit, directory, mail, mailboxes
from tasks.database import session
from tasks.orders import get
from tasks.paper_orders import continue_digitally, fallback_occasions, resume_when_back
from tasks.settings import settings

log = logging.getLogger(__name__)
SYSTEM = "system"
UNNOTIFIED = "paper_fallback_unnotified"
TEMPLATE = "paper_fallback"
SUBJECT = "Beställning {ref}: skriv ut pappersblanketten (reservrutin)"


def event_name(occasion: int) -> str:
    """The outbox event of one fallback: its Message-ID makes the email unique per order and occasion."""
    return f"paper_fallback-{occasion}"


def _run_name() -> str:
    ref = flow_run.parameters.get("reference")
    return f"{ref}-paper" if ref else "paper-fallback-sweep"


def _already(reference: str, action: str, occasion: int) -> bool:
    with session() as s:
        rows = s.scalars(select(AuditEvent.detail).where(AuditEvent.order_reference == reference,
                                                         AuditEvent.action == action))
        return any((d or {}).get("occasion") == occasion for d in rows)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()  # in a flow or task run: the line shows in the Prefect UI
    except MissingContextError:  # the embedded housekeeping loop
        return log


@task(name="check-paper-form", retries=1, retry_delay_seconds=2, persist_result=False, cache_policy=NO_CACHE)
def check_paper_form(reference: str) -> int:
    """Render the order's pre-filled paper form once to prove it can be printed; returns the fallback
    occasion (0 when the order is no longer in `paper_fallback`). The PDF is not kept anywhere."""
    return _check_paper_form(reference)


def _check_paper_form(reference: str) -> int:
    from forms.api import paper_order, paper_region  # the same conversion as the app's PDF endpoint
    from forms.paper import render_pdf

    with session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK:
            return 0
        occasion = fallback_occasions(s, reference)
    if _already(reference, "paper_form_checked", occasion):
        return occasion
    pdf = render_pdf(order.order_type, paper_region(order.region), paper_order(order))
    if not (pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]):
        raise RuntimeError(f"paper form for {reference} is not a complete PDF")
    with session() as s:
        audit.record(s, actor=SYSTEM, action="paper_form_checked", order=get(s, reference), channel="flow",
                     detail={"occasion": occasion, "bytes": len(pdf)})
    _logger().info("%s: paper form renders (%d bytes)", reference, len(pdf))
    return occasion


def _recipients(s: Any, order: Order) -> list[mail.Recipient]:
    orderer = directory.staff(s, order.submitted_by)
    if orderer is not None:
        return [mail.Recipient("orderer", orderer.email)]
    # The orderer has left the directory: the region's support queue takes the paper routine instead.
    queue = mailboxes.optional(load_regions()[order.region], "support_queue_email")
    return [mail.Recipient("support", queue)] if queue else []


@task(name="notify-paper-fallback", retries=2, retry_delay_seconds=2, persist_result=False, cache_policy=NO_CACHE)
def notify_orderer(reference: str, occasion: int) -> int:
    """Queue the orderer's email for this fallback (once: the Message-ID is unique), then try to send it
    now; the housekeeping loop sends it later if the SMTP server is down. Returns how many were queued."""
    return _notify_orderer(reference, occasion)


def _told_before(s: Any, reference: str) -> bool:
    """The orderer already has the paper instructions, and the order went back to digital by itself
    (the sweep) rather than by a person: falling back again changes nothing for them, so they are not
    asked to print a second time (a system that keeps failing would otherwise mail them again and again)."""
    last_resume = s.scalar(select(AuditEvent).where(AuditEvent.order_reference == reference,
                                                    AuditEvent.action == "resumed_digital")
                           .order_by(AuditEvent.id.desc()).limit(1))
    told = s.scalar(select(AuditEvent.id).where(AuditEvent.order_reference == reference,
                                                AuditEvent.action == "paper_fallback_notified").limit(1))
    return last_resume is not None and last_resume.actor == SYSTEM and told is not None


def _notify_orderer(reference: str, occasion: int) -> int:
    if occasion <= 0:
        return 0
    with session() as s:
        order = get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK or fallback_occasions(s, reference) != occasion:
            return 0
        if _told_before(s, reference):
            if not _already(reference, UNNOTIFIED, occasion):
                audit.record(s, actor=SYSTEM, action=UNNOTIFIED, order=order, channel="flow",
                             detail={"occasion": occasion, "why": "told_before"})
            return 0
        region_cfg = load_regions()[order.region]
        base = settings().app_base_url
        extra = {
            # As on the paper form: the region's sourced route, number and callback promise, or "Ej inställt".
            "postal_route": ", ".join(postal_lines(region_cfg)),
            "urgent_call": urgent_call_instruction(region_cfg),
            "urgent": "ja" if order.urgent else "",
            "needs_head_signature": "ja" if (order.stage_plan or {}).get("approval", {}).get("required", True) else "",
            "pdf_link": f"{base}/api/orders/{order.reference}/paper.pdf",
            "fallback_at": f"{local(datetime.now(UTC)):%Y-%m-%d %H:%M}",
        }
        recipients = _recipients(s, order)
        new = mail.enqueue(s, order, event_name(occasion), recipients, template=TEMPLATE, extra=extra,
                           subject=SUBJECT.format(ref=order.reference))
        if new:
            audit.record(s, actor=SYSTEM, action="paper_fallback_notified", order=order, channel="flow",
                         detail={"occasion": occasion, "recipients": [r.role for r in recipients]})
        elif not recipients and not _already(reference, UNNOTIFIED, occasion):
            audit.record(s, actor=SYSTEM, action=UNNOTIFIED, order=order, channel="flow",
                         detail={"occasion": occasion, "why": "no_recipient"})
    mail.deliver(reference)
    return new


# The run that falls back tells the orderer within seconds; one that has not after this long died in between.
# Repairing sooner would race the live run (two renders, two audit rows, an outbox insert conflict).
REPAIR_AFTER_S = 60.0


def _untold(now: datetime | None = None) -> list[str]:
    """Orders that fell back to paper over a minute ago and whose current fallback has no email in the
    outbox yet (and that were not found to have nobody to tell)."""
    before = (now or datetime.now(UTC)) - timedelta(seconds=REPAIR_AFTER_S)
    with session() as s:
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
                    and not _already(ref, UNNOTIFIED, occasion):
                out.append(ref)
        return out


# Per process: an order whose paper form fails to render is tried again a minute later, not every round.
_failed_until: dict[str, float] = {}
RETRY_FAILED_S = 60.0


def _tell_untold(now: datetime | None = None) -> list[str]:
    """The repair half of the `paper-fallback` flow without a flow run (the embedded loop calls it every
    round): an order whose run died between the fallback and the email still gets its email. Returns the
    references whose orderer was told now."""
    done = []
    for ref in _untold(now):
        if _failed_until.get(ref, 0.0) > time.monotonic():
            continue
        try:
            occasion = _check_paper_form(ref)
            if occasion and _notify_orderer(ref, occasion):
                done.append(ref)
        except Exception as exc:
            _failed_until[ref] = time.monotonic() + RETRY_FAILED_S
            log.warning("%s: paper fallback repair failed: %s", ref, type(exc).__name__)
    return done


async def sweep(now: datetime | None = None) -> dict[str, int]:
    """The paper routine's share of housekeeping: tell orderers who were not told, and hand orders whose
    paper form has not arrived back to the digital route once the execution system answers again.
    Called from the housekeeping flow and from the embedded loop (flows/serve.py)."""
    told = _tell_untold(now)
    resumed = await resume_when_back(now)
    return {"paper_told": len(told), "paper_resumed": len(resumed)}


paper_sweep = task(name="paper-sweep", persist_result=False, cache_policy=NO_CACHE)(sweep)


@flow(name="paper-fallback", flow_run_name=_run_name, persist_result=False, log_prints=False)
async def paper_fallback(reference: str | None = None) -> list[str]:
    """Check the paper form and tell the orderer, for one order, or (no reference) for every order in
    `paper_fallback` that was not told yet. Returns the references handled. The only parameter is the
    order reference: no personal data in Prefect."""
    refs = [reference] if reference else _untold()
    done = []
    for ref in refs:
        occasion = check_paper_form(ref)
        if occasion:
            notify_orderer(ref, occasion)
            done.append(ref)
    return done


async def resume_digital(reference: str, actor: str) -> Order:
    """The execution system is back: the order returns to the stage it was at (normally `executing`) and
    a new run completes it digitally. Support or admin. Raises orders.NotFound, orders.Conflict (not in
    `paper_fallback`), orders.Forbidden (wrong role or region)."""
    return await continue_digitally(reference, actor)


__all__ = ["paper_fallback", "paper_sweep", "resume_digital", "check_paper_form", "notify_orderer", "event_name",
           "sweep"]
