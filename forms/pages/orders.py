"""An order after it was submitted: the receipt, *Mina beställningar*, the order page with its timeline,
and what people do there (make it urgent, record the callback, withdraw it)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from forms.actions import cancel_order, decide, read_order_row
from forms.auth import User, require_user
from forms.deps import adapters, now
from forms.pages.common import form_str, phone_line, posted_form, render
from forms.urgent_routes import start_urgent_for
from models import contacts, sla
from models.routine import StagePlan, callback_promise_sv
from models.rules import WARNINGS
from models.status import CANCELLABLE, FINAL, LABELS_SV, OrderStatus
from models.tables import Order, Staff
from tasks.adapters import audit, directory
from tasks.steps import orders, urgency

router = APIRouter(include_in_schema=False)


def log_reads(s: Session, user: User, listed: list[Order], via: str, at: datetime) -> None:
    """A list that shows orders' masked numbers and reasons is a read of personal data, logged per order."""
    for o in listed:
        audit.record(s, actor=user.hsa_id, action="order_read", order=o, detail={"via": via}, at=at)


@router.get("/bestallningar/{reference}/kvitto", response_class=HTMLResponse)
def receipt(request: Request, reference: str, varningar: str = "") -> Response:
    user = require_user(request)
    ad = adapters(request)
    order = read_order_row(ad, user, reference, "receipt")
    warnings = [WARNINGS[c] for c in dict.fromkeys(varningar.split(",")) if c in WARNINGS]
    region = ad.region(order.region)
    phone, href = phone_line(region)
    return render(request, "receipt.html.j2", {
        "user": user, "title": f"Kvitto {order.reference}", "order": order, "warnings": warnings,
        "phone": phone, "tel": href, "region": region, "promise": contacts.promise(region),
        "urgent_line_always_open": region.urgent_line_always_open})


@router.get("/bestallningar", response_class=HTMLResponse)
def my_orders(request: Request) -> Response:
    user = require_user(request)
    ad, at = adapters(request), now(request)
    with ad.db.session() as s:
        rows = list(s.scalars(select(Order).where(Order.submitted_by == user.hsa_id)
                              .order_by(Order.created_at.desc()).limit(200)))
        log_reads(s, user, rows, "list", at)
        for o in rows:
            s.expunge(o)
    items = [{"o": o, "overdue": sla.is_overdue(o.due_at, o.status, at)} for o in rows]
    return render(request, "my_orders.html.j2", {"user": user, "title": "Mina beställningar", "items": items})


ACTION_TEXT = {"submitted": "Beställningen skickades in", "received": "Mottagen och planerad",
               "callback_recorded": "Återuppringning registrerad", "assessed": "Menprövning: begränsa",
               "assessed_no_restriction": "Menprövning: begränsa inte", "approved": "Godkänd",
               "approval_rejected": "Avslagen", "executed": "Verkställd", "cancelled": "Återkallad",
               "gateway_unavailable": "1177-systemet otillgängligt: pappersblankett",
               "execution_refused": "Verkställandet nekades av 1177-systemet"}


@router.get("/bestallningar/{reference}", response_class=HTMLResponse)
def order_page(request: Request, reference: str) -> Response:
    user = require_user(request)
    ad, at = adapters(request), now(request)
    order = read_order_row(ad, user, reference, "page")
    with ad.db.session() as s:
        view = orders.view(s, orders.get(s, order.reference))
        names = {p.hsa_id: p.name for p in s.scalars(select(Staff))}
        unit = directory.unit(s, order.care_unit_hsa_id)
    timeline = [{"at": h.at, "actor": "Systemet" if h.actor == "system" else names.get(h.actor, h.actor),
                 "text": ACTION_TEXT.get(h.note or "", LABELS_SV.get(OrderStatus(h.to), h.to)), "to": h.to}
                for h in view.history]
    can_cancel = OrderStatus(order.status) in CANCELLABLE and (user.hsa_id == order.submitted_by or user.has("admin"))
    clock = urgency.callback_clock(ad, order.reference, at) if order.callback_due_at else None
    # On-call support acts on the order from here: on the phone they have only the reference.
    on_call_here = user.has(*urgency.TRIGGER_ROLES) and user.region in (None, order.region)
    open_order = OrderStatus(order.status) not in FINAL
    return render(request, "order.html.j2", {
        "user": user, "title": f"Beställning {order.reference}", "order": order, "view": view,
        "timeline": timeline, "unit": unit, "can_cancel": can_cancel,
        "overdue": sla.is_overdue(order.due_at, order.status, at),
        "stages": [(k.value, p.as_json()) for k, p in StagePlan.from_json(order.stage_plan).stages.items()],
        "clock": clock, "urgent_summary": contacts.staff_urgent_summary(ad.region(order.region)),
        "can_make_urgent": on_call_here and open_order and clock is None,
        "can_record_callback": on_call_here and clock is not None and clock.recorded_at is None
                               and clock.state in ("running", "missed") and open_order,
        "notice": _notice(request, ad.region(order.region).promised_callback_minutes)})


def _notice(request: Request, callback_minutes: int | None) -> str | None:
    notices = {"aterkallad": "Beställningen är återkallad.",
               "bradskande": "Beställningen är nu brådskande och beredskapen (eller supportkön) är larmad. Ring upp "
                             f"beställaren {callback_promise_sv(callback_minutes)} och registrera återuppringningen här.",
               "uppringd": "Återuppringningen är registrerad; beställningen går vidare."}
    return next((text for key, text in notices.items() if request.query_params.get(key)), None)


@router.post("/bestallningar/{reference}/bradskande")
async def make_urgent_form(request: Request, reference: str) -> Response:
    user, form = await posted_form(request)
    out = await start_urgent_for(adapters(request), user, reference, now(request))
    return RedirectResponse(f"/bestallningar/{out.reference}?bradskande=1", status_code=303)


@router.post("/bestallningar/{reference}/aterringning")
async def callback_form(request: Request, reference: str) -> Response:
    user, form = await posted_form(request)
    result = await decide(adapters(request), reference, "callback", {"note": form_str(form, "note")[:2000]}, user)
    return RedirectResponse(f"/bestallningar/{result.reference}?uppringd=1", status_code=303)


@router.post("/bestallningar/{reference}/aterkalla")
async def cancel_form(request: Request, reference: str) -> Response:
    user, form = await posted_form(request)
    reason = form_str(form, "reason")[:2000]
    result = await cancel_order(adapters(request), reference, reason, user)
    return RedirectResponse(f"/bestallningar/{result.reference}?aterkallad=1", status_code=303)


