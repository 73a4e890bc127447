"""An order after it was submitted: the receipt, *Mina beställningar*, the order page with its timeline,
and what people do there (make it urgent, record the callback, withdraw it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from forms.actions import cancel_order, decide, read_order_row
from forms.auth import User, require_user
from forms.deps import adapters, now
from forms.pages.common import form_str, masked, phone_line, posted_form, render, tel_href
from forms.urgent_routes import start_urgent_for
from models import contacts, sla
from models.authority import refusal
from models.calendar import local
from models.routine import STAGE_OF_STATUS, STAGES, Stage, callback_promise_sv
from models.rules import WARNINGS
from models.status import CANCELLABLE, FINAL, LABELS_SV, OrderStatus
from models.tables import Order, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.steps import orders, urgency
from tasks.steps.progress import order_progress

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
    items = [{"o": o, "overdue": sla.is_overdue(o.due_at, o.status, at), "next": _next_deadline(o),
              "callback_missed": _callback_missed(o, at)} for o in rows]
    return render(request, "my_orders.html.j2", {"user": user, "title": "Mina beställningar", "items": items})


def _callback_missed(o: Order, at: datetime) -> bool:
    """The orderer was not called back in time and still has not been: their list says so."""
    return (o.urgent and o.callback_due_at is not None and o.callback_at is None and at > o.callback_due_at
            and OrderStatus(o.status) not in FINAL)


def _next_deadline(o: Order) -> tuple[str, datetime] | None:
    """The next time something is due on an open order, and what: the callback first, while it runs."""
    if OrderStatus(o.status) in FINAL:
        return None
    if o.urgent and o.callback_due_at and o.callback_at is None:
        return ("Återuppringning", o.callback_due_at)
    stage = STAGE_OF_STATUS.get(OrderStatus(o.status))
    return (STAGES[stage].title_sv if stage else "Klar", o.due_at) if o.due_at else None


ACTION_TEXT = {"submitted": "Beställningen skickades in", "received": "Mottagen och planerad",
               "callback_recorded": "Återuppringning registrerad", "assessed": "Menprövning: begränsa",
               "assessed_no_restriction": "Menprövning: begränsa inte", "approved": "Godkänd",
               "approval_rejected": "Avslagen", "executed": "Verkställd", "cancelled": "Återkallad",
               "gateway_unavailable": "1177-systemet otillgängligt: pappersblankett",
               "execution_refused": "Verkställandet nekades av 1177-systemet"}


def assessment_of(o: Order) -> dict[str, Any] | None:
    """The accepted harm assessment of `o` (decision, rationale, review), or None: what the approver and the
    account administrator see before they act."""
    d = next((d for d in o.decisions if d.stage == Stage.HARM_ASSESSMENT and d.state == "accepted"), None)
    if d is None:
        return None
    detail = d.detail or {}
    return {"decision": d.outcome, "harm_found": bool(detail.get("harm_found")), "rationale": d.text or "",
            "review_after_days": detail.get("review_after_days") or o.review_after_days,
            "review_due_on": o.review_due_on}


def _decision_box(s: Session, ad: Adapters, user: User, order: Order) -> dict[str, Any] | None:
    """The decision form when the order waits for a stage this person decides (the callback has its own box),
    or the reason they may not decide it (four eyes); None when it is not their step at all."""
    stage = STAGE_OF_STATUS.get(OrderStatus(order.status))
    if stage is None or stage == Stage.CALLBACK:
        return None
    sd = STAGES[stage]
    if not user.has(*sd.roles):
        return None
    why = refusal(stage.value, orders.decider(directory.staff(s, user.hsa_id)), orders.facts(s, order))
    if why and why.code not in ("own_order", "same_as_assessor"):
        return None
    return {"stage": stage.value, "slug": sd.queue_slug, "title": sd.title_sv, "button": sd.button_sv,
            "blocked": why.message if why else None,
            "pending": any(d.stage == stage.value and d.state == "proposed" for d in order.decisions),
            "review_days": ad.region(order.region).review_interval_days}


def _stage_rows(s: Session, order: Order, names: dict[str, str]) -> list[dict[str, Any]]:
    """Each stage as the page says it: done (who, when, outcome), waiting (for whom, until when), pending, or
    not required (why)."""
    rows = []
    for p in order_progress(s, order):
        deadline = order.callback_due_at if p.stage == Stage.CALLBACK else order.due_at
        who = None
        if p.decided_by:
            who = "Systemet (1177)" if p.decided_by == "system" else names.get(p.decided_by, p.decided_by)
        rows.append({"stage": p.stage.value, "title": STAGES[p.stage].title_sv, "state": p.state,
                     "reason": p.reason, "role": p.role, "who": who, "at": p.decided_at,
                     "outcome": p.outcome or {}, "deadline": deadline})
    return rows


def _callback_done(clock: urgency.CallbackClock | None, order: Order,
                   stage_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """When the orderer was called back (the earliest of the clock's record, the order's and the callback
    stage's, as tasks/steps/escalation.callback_recorded_at), and whether in time: the callback box then says "Återuppringd kl. …"."""
    done = next((r["at"] for r in stage_rows if r["stage"] == Stage.CALLBACK and r["state"] == "done"), None)
    at = min((t for t in (clock.recorded_at if clock else None, order.callback_at, done) if t is not None),
             default=None)
    in_time = at is not None and (order.callback_due_at is None or at <= order.callback_due_at)
    return {"callback_done_at": at, "callback_time": local(at).strftime("%H.%M") if at else None,
            "callback_in_time": in_time}


def _callback_note(order: Order) -> str:
    return next((d.text or "" for d in order.decisions if d.stage == Stage.CALLBACK and d.state == "accepted"), "")


def _order_facts(ad: Adapters, user: User, reference: str) -> dict[str, Any]:
    """What the order page shows, read in one session."""
    with ad.db.session() as s:
        o = orders.get(s, reference)
        names = {p.hsa_id: p.name for p in s.scalars(select(Staff))}
        out = {"view": orders.view(s, o), "unit": directory.unit(s, o.care_unit_hsa_id),
               "stage_rows": _stage_rows(s, o, names), "decision": _decision_box(s, ad, user, o),
               "assessment": assessment_of(o), "callback_note": _callback_note(o),
               "names": names}
        s.expunge_all()
    return out


def order_page_response(request: Request, user: User, reference: str, *, status: int = 200,
                        summary: list[dict[str, str]] | None = None,
                        decision_errors: dict[str, list[str]] | None = None,
                        decision_values: dict[str, str] | None = None) -> Response:
    """The order page; after a refused or incomplete decision with its errors and what was typed."""
    ad, at = adapters(request), now(request)
    order = read_order_row(ad, user, reference, "page")
    f = _order_facts(ad, user, order.reference)
    names = f.pop("names")
    timeline = [{"at": h.at, "actor": "Systemet" if h.actor == "system" else names.get(h.actor, h.actor),
                 "text": ACTION_TEXT.get(h.note or "", LABELS_SV.get(OrderStatus(h.to), h.to)), "to": h.to}
                for h in f["view"].history]
    clock = urgency.callback_clock(ad, order.reference, at) if order.callback_due_at else None
    region = ad.region(order.region)
    return render(request, "order.html.j2", {
        **f, **_actions(user, order, clock), **_contacts(ad, user, order), **_callback_done(clock, order, f["stage_rows"]),
        "user": user, "title": ("Fel: " if summary else "") + f"Beställning {order.reference}",
        "order": order, "timeline": timeline, "overdue": sla.is_overdue(order.due_at, order.status, at),
        "clock": clock, "urgent_summary": contacts.staff_urgent_summary(region),
        "summary": summary or [], "decision_errors": decision_errors or {}, "decision_values": decision_values or {},
        "notice": _notice(request, region.promised_callback_minutes)}, status)


def _on_call_here(user: User, order: Order) -> bool:
    # On-call support acts on the order from here: on the phone they have only the reference.
    return user.has(*urgency.TRIGGER_ROLES) and user.region in (None, order.region)


def _actions(user: User, order: Order, clock: urgency.CallbackClock | None) -> dict[str, bool]:
    """What this person may do on the page: withdraw, make urgent, record the callback."""
    open_order = OrderStatus(order.status) not in FINAL
    on_call_here = _on_call_here(user, order)
    return {
        "can_cancel": OrderStatus(order.status) in CANCELLABLE and (user.hsa_id == order.submitted_by
                                                                    or user.has("admin")),
        "can_make_urgent": on_call_here and open_order and clock is None,
        "can_record_callback": on_call_here and clock is not None and clock.recorded_at is None
                               and clock.state in ("running", "missed") and open_order}


def _contacts(ad: Adapters, user: User, order: Order) -> dict[str, Any]:
    """Phone numbers and links: support's (everyone), the orderer's callback number (on call, support, the
    orderer, admins), the guardian's masked number of a guardian block, the Prefect run (admins)."""
    phone, tel = phone_line(ad.region(order.region))
    shows_callback_phone = bool(order.callback_phone) and (
        _on_call_here(user, order) or user.hsa_id == order.submitted_by or user.has("admin"))
    guardian = None
    if order.order_type == "block_guardian" and order.guardian_pnr and not order.guardian_protected:
        guardian = masked(order.guardian_pnr)
    return {"support_phone": phone, "support_tel": tel,
            "callback_tel": tel_href(order.callback_phone) if shows_callback_phone and order.callback_phone else None,
            "guardian": guardian, "run_url": _run_url(ad, order) if user.has("admin") else None}


def _run_url(ad: Adapters, order: Order) -> str | None:
    """The order's run in the Prefect dashboard (its name is the reference, too)."""
    if not order.flow_run_id:
        return None
    return f"{ad.settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{quote(order.flow_run_id)}"


@router.get("/bestallningar/{reference}", response_class=HTMLResponse)
def order_page(request: Request, reference: str) -> Response:
    return order_page_response(request, require_user(request), reference)


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


@router.get("/bestallningar/{reference}/aterkalla", response_class=HTMLResponse)
def cancel_confirm(request: Request, reference: str) -> Response:
    """Withdrawing asks first: this page says what withdrawing does and takes the reason (works without
    JavaScript; the order page's link leads here)."""
    user = require_user(request)
    order = read_order_row(adapters(request), user, reference, "page")
    can_cancel = OrderStatus(order.status) in CANCELLABLE and (user.hsa_id == order.submitted_by or user.has("admin"))
    return render(request, "cancel_confirm.html.j2", {
        "user": user, "title": f"Återkalla {order.reference}?", "order": order, "can_cancel": can_cancel})


@router.post("/bestallningar/{reference}/aterkalla")
async def cancel_form(request: Request, reference: str) -> Response:
    user, form = await posted_form(request)
    reason = form_str(form, "reason")[:2000]
    result = await cancel_order(adapters(request), reference, reason, user)
    return RedirectResponse(f"/bestallningar/{result.reference}?aterkallad=1", status_code=303)


