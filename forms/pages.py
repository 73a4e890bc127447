"""HTML pages for people, in Swedish: start page, order forms, receipt, my orders, queues, order page, login.

Every page works without JavaScript; `static/app.js` only adds show/hide, live validation and a
double-click guard. URLs and titles carry order references, never personal numbers. Templates are
autoescaped (free text is always shown as text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import uuid4

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, and_, false, func, or_, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from flows import urgent
from forms import api, urgent_routes
from forms.auth import (
    CSRF_FIELD,
    ROLE_LABELS_SV,
    NotAllowed,
    User,
    check_form_csrf,
    clear_session,
    identify,
    new_login,
    require_roles,
    require_user,
    session_data,
    set_session,
)
from forms.now import now as current_time
from models import contacts, personnummer, sla
from models.authority import refusal
from models.calendar import local
from models.regions import UNSET_SV, load_regions
from models.rules import WARNINGS
from models.schemas import (
    INITIATIVE_LABELS_SV,
    ORDER_TYPE_LABELS_SV,
    ORDER_TYPES,
    ApprovalDecision,
    AssessmentDecision,
    CallbackRecord,
    ExecutionRecord,
    Problem,
)
from models.status import CANCELLABLE, FINAL, LABELS_SV, OrderStatus
from models.tables import CareUnit, Order, Staff
from tasks import audit, directory, orders
from tasks.database import session
from tasks.settings import settings

router = APIRouter(include_in_schema=False)

MONTHS = ("januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti", "september", "oktober",
          "november", "december")
WEEKDAYS = ("måndag", "tisdag", "onsdag", "torsdag", "fredag", "lördag", "söndag")
ORDER_TYPE_HELP = {
    "seal_or_lock": "När journalen ska förseglas, inloggningen till 1177 e-tjänster låsas, eller båda – "
                    "på patientens önskemål eller vårdens initiativ.",
    "restore_access": "När en försegling eller låsning ska hävas. Patientens egen försegling hävs bara efter "
                      "identitetskontroll vid personligt besök.",
    "block_guardian": "När ett barn kan antas lida betydande men om en vårdnadshavare har direktåtkomst till "
                      "barnets journal och e-tjänster. Endast på vårdens initiativ.",
    "minor_access": "När ett barn som är 13–15 år, eller barnets vårdnadshavare, undantagsvis ska få eller inte "
                    "längre ha tillgång till barnets journal. Endast på vårdens initiativ.",
}
# Fuller than models.schemas.ACTION_LABELS_SV, and the same words as the paper form.
SEAL_LABELS = {"seal_journal": "Försegla 1177 journal", "lock_login": "Låsa inloggning till 1177 e-tjänster"}
RESTORE_LABELS = {"seal_journal": "Bryta försegling av 1177 journal",
                  "lock_login": "Låsa upp inloggning till 1177 e-tjänster"}
CARE_ONLY = ("block_guardian", "minor_access")
# The fields each form shows, in page order (the error summary follows the same order).
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "seal_or_lock": ("patient_personal_number", "patient_protected_identity", "initiative", "actions", "urgent",
                     "reason", "care_unit_hsa_id"),
    "restore_access": ("patient_personal_number", "patient_protected_identity", "initiative", "actions",
                       "identity_checked_in_person", "urgent", "reason", "care_unit_hsa_id"),
    "block_guardian": ("patient_personal_number", "patient_protected_identity", "guardian_personal_number",
                       "guardian_protected_identity", "urgent", "reason", "care_unit_hsa_id"),
    "minor_access": ("patient_personal_number", "patient_protected_identity", "minor_grant", "minor_recipient",
                     "guardian_personal_number", "guardian_protected_identity", "child_consent", "urgent", "reason",
                     "care_unit_hsa_id"),
}
# Rule-engine field names -> the form group that shows the message.
GROUP_OF = {"minor_access": "minor_grant", "minor_access.grant": "minor_grant",
            "minor_access.recipient": "minor_recipient", "minor_access.child_consent": "child_consent",
            "region": "care_unit_hsa_id"}
# The element an error-summary link moves focus to: the first option of a radio/checkbox group.
ANCHOR_OF = {"initiative": "initiative-patient", "actions": "actions-seal_journal",
             "minor_grant": "minor_grant-grant", "minor_recipient": "minor_recipient-minor"}


@dataclass(frozen=True)
class Queue:
    stage: str
    title: str
    roles: tuple[str, ...]
    intro: str
    button: str


QUEUES: dict[str, Queue] = {
    "menprovning": Queue("harm_assessment", "Menprövning", ("assessor",),
                         "Beställningar i din region som väntar på menprövning.", "Registrera menprövning"),
    "godkannande": Queue("approval", "Godkännande", ("head_of_department", "bakjour"),
                         "Beställningar som väntar på ditt godkännande: din vårdenhets, och som bakjour "
                         "brådskande beställningar utanför kontorstid.", "Registrera beslut"),
    "aterringning": Queue("callback", "Återuppringning", ("on_call", "support"),
                          "Brådskande beställningar där beställaren ska ringas upp inom 30 minuter.",
                          "Registrera återuppringning"),
    "verkstallande": Queue("execution", "Manuellt verkställande", ("account_admin",),
                           "Godkända beställningar som ska utföras i 1177 administrationsverktyg.",
                           "Bekräfta verkställande"),
}


# --- formatting ---------------------------------------------------------------------------------------

def when(at: datetime | None) -> str:
    """Europe/Stockholm, Swedish style: 'tisdag 24 november 2026 kl. 16.00'."""
    if at is None:
        return "–"
    t = local(at)
    return f"{WEEKDAYS[t.weekday()]} {t.day} {MONTHS[t.month - 1]} {t.year} kl. {t:%H.%M}"


def short_when(at: datetime | None) -> str:
    if at is None:
        return "–"
    t = local(at)
    return f"{t.day} {MONTHS[t.month - 1][:3]} {t.year} {t:%H.%M}"


def tel_href(phone: str) -> str:
    digits = re.sub(r"[^0-9+]", "", phone)
    return "tel:" + ("+46" + digits[1:] if digits.startswith("0") else digits)


def phone_line(region_code: str) -> tuple[str, str | None]:
    """The support number as people read it, and its tel: link (None when the number is not set)."""
    r = load_regions()[region_code]
    phone = r.support_phone.shown
    return contacts.support_phone_text(r, sep=", "), tel_href(phone) if phone else None


def demo_mode() -> bool:
    """The embedded demo (RO_DEMO=true): base.html.j2 marks every page with it."""
    return settings().demo


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates" / "pages"),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, short_when=short_when)
    env.globals.update(status_label=lambda s: LABELS_SV.get(OrderStatus(s), s), type_label=ORDER_TYPE_LABELS_SV.get,
                       initiative_label=INITIATIVE_LABELS_SV.get, action_label=SEAL_LABELS.get,
                       restore_label=RESTORE_LABELS.get, role_label=ROLE_LABELS_SV.get, demo=demo_mode,
                       unset_text=UNSET_SV)
    return env


templates = Jinja2Templates(env=_env())


# --- rendering ----------------------------------------------------------------------------------------

def nav(user: User | None) -> list[tuple[str, str]]:
    if user is None:
        return []
    items = [("/", "Start")]
    if user.has("clinician"):
        items.append(("/bestallningar", "Mina beställningar"))
    items += [(f"/ko/{slug}", q.title) for slug, q in QUEUES.items() if user.has(*q.roles)]
    if user.has("head_of_department"):
        items.append(("/omprovningar", "Omprövning"))  # forms/admin_routes.py
    if user.has("admin"):
        items.append(("/admin", "Översikt"))
    return items


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    user = ctx.get("user")
    data = session_data(request)
    base: dict[str, Any] = {"user": user, "nav": nav(user), "path": request.url.path, "csrf": data.csrf, "csrf_field": CSRF_FIELD,
            "errors": {}, "summary": [], "notice": None}
    response = templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)
    if data.fresh:  # so a later form post can echo the token (also for SSO users without a login session)
        set_session(response, data)
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    titles = {401: "Inte inloggad", 403: "Åtkomst nekad", 404: "Sidan finns inte", 409: "Kan inte göras nu",
              413: "För stor förfrågan", 500: "Tekniskt fel", 503: "Tillfälligt otillgänglig"}
    try:
        user = identify(request)
    except Exception:  # the database may be what failed
        user = None
    return render(request, "error.html.j2", {"user": user, "title": titles.get(status, "Fel"), "message": message,
                                             "status": status}, status)


def render_plain_error(status: int, title: str, message: str) -> str:
    """For the body-size guard, which answers before any request object exists."""
    return templates.env.get_template("error.html.j2").render(
        user=None, nav=[], path="", csrf="", csrf_field=CSRF_FIELD, errors={}, summary=[], notice=None,
        title=title, message=message, status=status)


def _summary(problems: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """[(anchor id, label, message)] -> the error summary's links."""
    return [{"href": f"#{anchor}", "text": f"{label}: {message}" if label else message}
            for anchor, label, message in problems]


# --- login --------------------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    # Only paths on this site: an absolute or protocol-relative URL would make the login an open redirect.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    if not settings().embedded_login:
        return error_page(request, 404, "Inloggning sker via SITHS-kort (single sign-on).")
    regions = load_regions()
    with session() as s:
        people = sorted(s.scalars(select(Staff).where(Staff.active.is_(True))),
                        key=lambda p: (p.region is None, p.region or "", p.hsa_id))
    groups: dict[str, list[Staff]] = {}
    for p in people:
        groups.setdefault(regions[p.region].name if p.region in regions else "Alla regioner", []).append(p)
    return render(request, "login.html.j2", {"title": "Logga in", "groups": groups, "next": _safe_next(next),
                                             "current": identify(request)})


@router.post("/login")
async def login(request: Request) -> Response:
    if not settings().embedded_login:
        return error_page(request, 404, "Inloggning sker via SITHS-kort (single sign-on).")
    form = await request.form()
    check_form_csrf(request, _str(form, CSRF_FIELD))
    with session() as s:
        person = directory.staff(s, _str(form, "hsa_id"))
        hsa = person.hsa_id if person else None
    if hsa is None:
        return error_page(request, 403, "Personen finns inte i personalkatalogen.")
    response = RedirectResponse(_safe_next(_str(form, "next")), status_code=303)
    set_session(response, new_login(hsa))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    check_form_csrf(request, _str(form, CSRF_FIELD))
    response = RedirectResponse("/login", status_code=303)
    clear_session(response)
    return response


# --- start page ---------------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def start(request: Request) -> Response:
    user = require_user(request)
    types = [{"code": t, "label": ORDER_TYPE_LABELS_SV[t], "help": ORDER_TYPE_HELP[t]} for t in ORDER_TYPES]
    queues = [(f"/ko/{slug}", q) for slug, q in QUEUES.items() if user.has(*q.roles)]
    return render(request, "start.html.j2", {"user": user, "title": "Start", "types": types, "queues": queues,
                                             "region": user.region or "kalmar"})


# --- order forms --------------------------------------------------------------------------------------

def _str(form: FormData, name: str) -> str:
    v = form.get(name)
    return v.strip() if isinstance(v, str) else ""


def _units() -> list[CareUnit]:
    with session() as s:
        return list(s.scalars(select(CareUnit).order_by(CareUnit.region, CareUnit.name)))


def form_values(order_type: str, form: FormData | None, user: User) -> dict[str, Any]:
    if form is None:
        return {"initiative": "care" if order_type in CARE_ONLY else "", "actions": [], "patient_personal_number": "",
                "patient_protected_identity": False, "guardian_personal_number": "",
                "guardian_protected_identity": False, "minor_grant": "",
                "minor_recipient": "", "child_consent": False, "identity_checked_in_person": False, "urgent": False,
                "reason": "", "care_unit_hsa_id": user.unit_hsa_id or "", "idempotency_key": uuid4().hex}
    return {
        "initiative": "care" if order_type in CARE_ONLY else _str(form, "initiative"),
        "actions": [a for a in form.getlist("actions") if isinstance(a, str)],
        "patient_personal_number": _str(form, "patient_personal_number"),
        "patient_protected_identity": "patient_protected_identity" in form,
        "guardian_personal_number": _str(form, "guardian_personal_number"),
        "guardian_protected_identity": "guardian_protected_identity" in form,
        "minor_grant": _str(form, "minor_grant"), "minor_recipient": _str(form, "minor_recipient"),
        "child_consent": "child_consent" in form, "identity_checked_in_person": "identity_checked_in_person" in form,
        "urgent": "urgent" in form, "reason": _str(form, "reason"),
        "care_unit_hsa_id": _str(form, "care_unit_hsa_id"),
        "idempotency_key": _str(form, "idempotency_key") or uuid4().hex,
    }


def to_raw(order_type: str, v: dict[str, Any], user: User, units: list[CareUnit]) -> dict[str, Any]:
    """The form's values as the API body, so both paths meet the same rules."""
    region_of = {u.hsa_id: u.region for u in units}
    raw: dict[str, Any] = {
        "order_type": order_type, "initiative": v["initiative"] or None,
        "patient_personal_number": v["patient_personal_number"],
        "patient_protected_identity": v["patient_protected_identity"], "urgent": v["urgent"], "reason": v["reason"],
        "care_unit_hsa_id": v["care_unit_hsa_id"],
        # The region follows the chosen care unit: one field less to get wrong.
        "region": region_of.get(v["care_unit_hsa_id"]) or user.region,
    }
    if order_type in ("seal_or_lock", "restore_access"):
        raw["actions"] = v["actions"]
    if order_type == "restore_access":
        raw["identity_checked_in_person"] = v["identity_checked_in_person"]
    if order_type == "block_guardian" or (order_type == "minor_access" and v["minor_recipient"] == "guardian"):
        raw["guardian_personal_number"] = v["guardian_personal_number"]
        raw["guardian_protected_identity"] = v["guardian_protected_identity"]
    if order_type == "minor_access":
        raw["minor_access"] = {"grant": {"grant": True, "revoke": False}.get(v["minor_grant"]),
                               "recipient": v["minor_recipient"] or None, "child_consent": v["child_consent"]}
    return raw


def field_labels(order_type: str) -> dict[str, str]:
    child = order_type in CARE_ONLY
    return {
        "patient_personal_number": f"{'Barnets' if child else 'Patientens'} personnummer eller samordningsnummer",
        "patient_protected_identity": "Skyddade personuppgifter",
        "initiative": "Initiativ", "actions": "Vad ska hävas?" if order_type == "restore_access" else "Åtgärd",
        "identity_checked_in_person": "Identitetskontroll",
        "guardian_personal_number": "Vårdnadshavarens personnummer",
        "guardian_protected_identity": "Vårdnadshavarens skyddade personuppgifter",
        "minor_grant": "Ge eller ta bort tillgång", "minor_recipient": "Tillgång för",
        "child_consent": "Barnets samtycke", "urgent": "Brådskande", "reason": "Skäl till beställningen",
        "care_unit_hsa_id": "Beställande vårdenhet",
    }


def _form_page(request: Request, user: User, order_type: str, values: dict[str, Any],
               problems: list[Problem] | None = None, warnings: list[Problem] | None = None, status: int = 200) -> Response:
    labels = field_labels(order_type)
    order = FORM_FIELDS[order_type]
    errors: dict[str, list[str]] = {}
    for p in problems or []:
        group = GROUP_OF.get(p.field, p.field)
        errors.setdefault(group if group in order else "", []).append(p.message)
    listed = sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1)
    summary = _summary([(ANCHOR_OF.get(g, g) if g else "order-form", labels.get(g, ""), m)
                        for g, msgs in listed for m in msgs])
    title = ("Fel: " if errors else "") + f"Ny beställning: {ORDER_TYPE_LABELS_SV[order_type]}"
    return render(request, "order_form.html.j2", {
        "user": user, "title": title, "order_type": order_type, "label": ORDER_TYPE_LABELS_SV[order_type],
        "help": ORDER_TYPE_HELP[order_type], "fields": order, "labels": labels, "v": values, "errors": errors,
        "summary": summary, "warnings": warnings or [], "units": _units(), "care_only": order_type in CARE_ONLY,
        "action_labels": RESTORE_LABELS if order_type == "restore_access" else SEAL_LABELS,
    }, status)


def _order_type(order_type: str) -> str:
    if order_type not in ORDER_TYPES:
        raise api.ApiError(404, "not_found", "Det finns ingen sådan beställningstyp.")
    return order_type


@router.get("/bestall/{order_type}", response_class=HTMLResponse)
def order_form(request: Request, order_type: str) -> Response:
    user = require_user(request)
    require_roles(user, "clinician", message="Endast vårdpersonal kan göra beställningar.")
    return _form_page(request, user, _order_type(order_type), form_values(order_type, None, user))


@router.post("/bestall/{order_type}")
async def submit_form(request: Request, order_type: str) -> Response:
    user = require_user(request)
    form = await request.form()
    check_form_csrf(request, _str(form, CSRF_FIELD))
    require_roles(user, "clinician", message="Endast vårdpersonal kan göra beställningar.")
    values = form_values(_order_type(order_type), form, user)
    raw = to_raw(order_type, values, user, _units())
    # The hidden idempotency token makes a double click (or a reload of the post) one order.
    try:
        result = await api.submit_raw(raw, user, f"form-{values['idempotency_key'][:64]}")
    except api.ApiError as exc:
        if exc.status != 409:
            raise
        values["idempotency_key"] = uuid4().hex  # the token was used for other values: let the person resend
        message = ("Formuläret har redan skickats en gång med andra uppgifter. Kontrollera uppgifterna och "
                   "skicka igen för att göra en ny beställning.")
        return _form_page(request, user, order_type, values, [Problem(field="", code=exc.code, message=message)],
                          status=409)
    if result.status == 422:
        return _form_page(request, user, order_type, values, result.errors, result.warnings, 422)
    codes = ",".join(w.code for w in result.warnings)
    target = f"/bestallningar/{result.body['reference']}/kvitto" + (f"?varningar={quote(codes)}" if codes else "")
    return RedirectResponse(target, status_code=303)


# --- receipt, my orders, order page ------------------------------------------------------------------

@router.get("/bestallningar/{reference}/kvitto", response_class=HTMLResponse)
def receipt(request: Request, reference: str, varningar: str = "") -> Response:
    user = require_user(request)
    order = api.read_order_row(user, reference, "receipt")
    warnings = [WARNINGS[c] for c in dict.fromkeys(varningar.split(",")) if c in WARNINGS]
    phone, href = phone_line(order.region)
    region = load_regions()[order.region]
    return render(request, "receipt.html.j2", {
        "user": user, "title": f"Kvitto {order.reference}", "order": order, "warnings": warnings,
        "phone": phone, "tel": href, "region": region, "promise": contacts.promise(region),
        "urgent_line_always_open": region.urgent_line_always_open})


@router.get("/bestallningar", response_class=HTMLResponse)
def my_orders(request: Request) -> Response:
    user = require_user(request)
    now = current_time()
    with session() as s:
        rows = list(s.scalars(select(Order).where(Order.submitted_by == user.hsa_id)
                              .order_by(Order.created_at.desc()).limit(200)))
        _log_reads(s, user, rows, "list", now)
        for o in rows:
            s.expunge(o)
    items = [{"o": o, "overdue": sla.is_overdue(o.due_at, o.status, now)} for o in rows]
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
    order = api.read_order_row(user, reference, "page")
    with session() as s:
        view = orders.view(s, orders.get(s, order.reference))
        names = {p.hsa_id: p.name for p in s.scalars(select(Staff))}
        unit = directory.unit(s, order.care_unit_hsa_id)
    timeline = [{"at": h.at, "actor": "Systemet" if h.actor == "system" else names.get(h.actor, h.actor),
                 "text": ACTION_TEXT.get(h.note or "", LABELS_SV.get(OrderStatus(h.to), h.to)), "to": h.to}
                for h in view.history]
    now = current_time()
    can_cancel = OrderStatus(order.status) in CANCELLABLE and (user.hsa_id == order.submitted_by or user.has("admin"))
    clock = urgent.callback_clock(order.reference, now) if order.callback_due_at else None
    # On-call support acts on the order from here: on the phone they have only the reference.
    on_call_here = user.has(*urgent.TRIGGER_ROLES) and user.region in (None, order.region)
    open_order = OrderStatus(order.status) not in FINAL
    return render(request, "order.html.j2", {
        "user": user, "title": f"Beställning {order.reference}", "order": order, "view": view,
        "timeline": timeline, "unit": unit, "can_cancel": can_cancel,
        "overdue": sla.is_overdue(order.due_at, order.status, now),
        "stages": [(k, v) for k, v in (order.stage_plan or {}).items()], "clock": clock,
        "urgent_summary": contacts.staff_urgent_summary(load_regions()[order.region]),
        "can_make_urgent": on_call_here and open_order and clock is None,
        "can_record_callback": on_call_here and clock is not None and clock.recorded_at is None
                               and clock.state in ("running", "missed") and open_order,
        "notice": ORDER_NOTICES.get(next((k for k in ORDER_NOTICES if request.query_params.get(k)), ""))})


ORDER_NOTICES = {"aterkallad": "Beställningen är återkallad.",
                 "bradskande": "Beställningen är nu brådskande och beredskapen (eller supportkön) är larmad. "
                               "Ring upp beställaren inom 30 minuter och registrera återuppringningen här.",
                 "uppringd": "Återuppringningen är registrerad; beställningen går vidare."}


async def _posted_form(request: Request) -> tuple[User, FormData]:
    """The person and the form of a page's POST, after the form's CSRF check."""
    user = require_user(request)
    form = await request.form()
    check_form_csrf(request, _str(form, CSRF_FIELD))
    return user, form


@router.post("/bestallningar/{reference}/bradskande")
async def make_urgent_form(request: Request, reference: str) -> Response:
    user, form = await _posted_form(request)
    out = await urgent_routes.start_urgent_for(user, reference, current_time())
    return RedirectResponse(f"/bestallningar/{out.reference}?bradskande=1", status_code=303)


@router.post("/bestallningar/{reference}/aterringning")
async def callback_form(request: Request, reference: str) -> Response:
    user, form = await _posted_form(request)
    result = await api.decide(reference, "callback", {"note": _str(form, "note")[:2000]}, user)
    return RedirectResponse(f"/bestallningar/{result.reference}?uppringd=1", status_code=303)


@router.post("/bestallningar/{reference}/aterkalla")
async def cancel_form(request: Request, reference: str) -> Response:
    user, form = await _posted_form(request)
    reason = _str(form, "reason")[:2000]
    result = await api.cancel_order(reference, reason, user)
    return RedirectResponse(f"/bestallningar/{result.reference}?aterkallad=1", status_code=303)


# --- queues -------------------------------------------------------------------------------------------

@dataclass
class QueueItem:
    order: Order
    unit_name: str
    overdue: bool
    blocked: str | None
    pending: bool
    review_days: int
    errors: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    seconds_left: int | None = None  # the callback clock, in the callback queue


def _seconds_left(due: datetime | None, now: datetime) -> int | None:
    return None if due is None else max(0, math.ceil((due - now).total_seconds()))


QUEUE_LIMIT = 200  # most urgent first; a longer queue is a staffing problem, not a page to scroll


def _queue_query(stage: str, user: User) -> Select[tuple[Order]]:
    """The orders of `stage` this person may decide on, filtered in SQL before the limit: a limit taken
    before the region or unit filter would fill the page with other regions' orders and hide this one's."""
    if stage != "callback":
        q = select(Order).where(Order.status == orders.STAGE_STATUS[stage]).order_by(Order.due_at, Order.id)
    else:
        # Every running callback clock, nearest deadline first: also orders made urgent after their callback
        # stage, and urgent orders whose run has not received them yet (Prefect down).
        open_statuses = [st.value for st in OrderStatus if st not in FINAL and st != OrderStatus.PAPER_FALLBACK]
        q = (select(Order).where(Order.urgent.is_(True), Order.callback_at.is_(None),
                                 Order.callback_due_at.is_not(None), Order.status.in_(open_statuses))
             .order_by(Order.callback_due_at, Order.id))
    if user.region:
        q = q.where(Order.region == user.region)
    if stage == "approval":
        # The same rule as models.authority, in SQL: the head of the ordering unit, or the bakjour of the
        # order's region when the plan says bakjour. The rule itself still decides each row (queue_items).
        role = func.coalesce(Order.stage_plan[("approval", "role")].as_string(), "head_of_department")
        mine = []
        if user.has("head_of_department"):
            headed = select(CareUnit.hsa_id).where(CareUnit.head_hsa_id == user.hsa_id)
            mine.append(and_(role == "head_of_department", Order.care_unit_hsa_id.in_(headed)))
        if user.has("bakjour") and user.region:
            mine.append(and_(role == "bakjour", Order.region == user.region))
        q = q.where(or_(*mine) if mine else false())
    return q


def queue_items(user: User, q: Queue) -> list[QueueItem]:
    now = current_time()
    regions = load_regions()
    with session() as s:
        rows = list(s.scalars(_queue_query(q.stage, user).limit(QUEUE_LIMIT)))
        decider = orders.decider(directory.staff(s, user.hsa_id))
        items = []
        for o in rows:
            why = refusal(q.stage, decider, orders.facts(s, o))
            if why and why.code not in ("own_order", "same_as_assessor"):
                continue  # another unit's or region's decision: not this person's queue
            unit = directory.unit(s, o.care_unit_hsa_id)
            pending = any(d.stage == q.stage and d.state == "proposed" for d in o.decisions)
            left = _seconds_left(o.callback_due_at, now) if q.stage == "callback" else None
            overdue = left == 0 if left is not None else sla.is_overdue(o.due_at, o.status, now)
            items.append(QueueItem(o, unit.name if unit else o.care_unit_hsa_id, overdue,
                                   why.message if why else None, pending, regions[o.region].review_interval_days,
                                   seconds_left=left))
        # The page shows each order's masked number and reason: a read of personal data, logged per order,
        # in the same transaction as the query (one commit however long the queue).
        _log_reads(s, user, [it.order for it in items], "queue", now)
        for it in items:
            s.expunge(it.order)
    return items


def _log_reads(s: Session, user: User, listed: list[Order], via: str, at: datetime) -> None:
    for o in listed:
        audit.record(s, actor=user.hsa_id, action="order_read", order=o, detail={"via": via}, at=at)


def _queue(slug: str) -> Queue:
    if slug not in QUEUES:
        raise api.ApiError(404, "not_found", "Det finns ingen sådan arbetskö.")
    return QUEUES[slug]


def _queue_page(request: Request, user: User, slug: str, items: list[QueueItem], status: int = 200,
                summary: list[dict[str, str]] | None = None, notice: str | None = None) -> Response:
    q = QUEUES[slug]
    return render(request, "queue.html.j2", {
        "user": user, "title": ("Fel: " if summary else "") + f"Arbetskö: {q.title}", "q": q, "slug": slug,
        "items": items, "summary": summary or [], "notice": notice}, status)


@router.get("/ko/{slug}", response_class=HTMLResponse)
def queue(request: Request, slug: str, klar: str = "") -> Response:
    user = require_user(request)
    q = _queue(slug)
    require_roles(user, *q.roles)
    notice = f"Beslutet för {klar} är registrerat." if api.REFERENCE.fullmatch(klar) else None
    return _queue_page(request, user, slug, queue_items(user, q), notice=notice)


def parse_decision(stage: str, form: FormData) -> tuple[BaseModel | None, dict[str, str], dict[str, str]]:
    """(decision, errors by field, entered values)."""
    values = {k: _str(form, k) for k in ("harm_found", "decision", "rationale", "review_after_days", "approved",
                                         "comment", "note", "system_reference")}
    errors: dict[str, str] = {}
    yes_no = {"yes": True, "no": False}
    body: dict[str, Any]
    model: type[BaseModel]
    if stage == "harm_assessment":
        if values["harm_found"] not in yes_no:
            errors["harm_found"] = "Ange om det finns risk för men."
        if values["decision"] not in ("restrict", "do_not_restrict"):
            errors["decision"] = "Välj beslut."
        days = values["review_after_days"]
        if days and not (days.isdigit() and 1 <= int(days) <= 3650):
            errors["review_after_days"] = "Ange ett antal dagar mellan 1 och 3650."
        body = {"harm_found": yes_no.get(values["harm_found"]), "decision": values["decision"],
                "rationale": values["rationale"], "review_after_days": int(days) if days.isdigit() else None}
        model = AssessmentDecision
    elif stage == "approval":
        if values["approved"] not in yes_no:
            errors["approved"] = "Välj om beställningen godkänns eller avslås."
        body, model = {"approved": yes_no.get(values["approved"]), "comment": values["comment"]}, ApprovalDecision
    elif stage == "callback":
        body, model = {"note": values["note"]}, CallbackRecord
    else:
        if not values["system_reference"]:
            errors["system_reference"] = "Ange referensen från 1177 administrationsverktyg."
        body, model = {"system_reference": values["system_reference"]}, ExecutionRecord
    for k in ("rationale", "comment", "note"):
        if len(values[k]) > 2000:
            errors[k] = "Högst 2000 tecken."
    if errors:
        return None, errors, values
    try:
        return model.model_validate(body), {}, values
    except ValidationError as exc:
        return None, {str(e["loc"][0]): "Ogiltigt värde." for e in exc.errors()}, values


FIRST_INPUT = {"harm_found": "harm_found-yes", "decision": "decision-restrict", "approved": "approved-yes"}
DECISION_LABELS = {"harm_found": "Risk för men", "decision": "Beslut", "review_after_days": "Omprövning",
                   "approved": "Beslut", "system_reference": "Referens i 1177", "rationale": "Motivering",
                   "comment": "Kommentar", "note": "Anteckning"}


@router.post("/ko/{slug}/{reference}")
async def queue_decision(request: Request, slug: str, reference: str) -> Response:
    user = require_user(request)
    q = _queue(slug)
    form = await request.form()
    check_form_csrf(request, _str(form, CSRF_FIELD))
    require_roles(user, *q.roles)
    if not api.REFERENCE.fullmatch(reference.strip().upper()):
        # Never shown back: what is in the address may be anything, a personal number even.
        raise api.ApiError(404, "not_found", "Beställningen finns inte.")
    decision, errors, values = parse_decision(q.stage, form)
    url_stage = next(k for k, v in api.STAGES.items() if v == q.stage)
    status, top = 422, ""
    if decision is not None:
        try:
            await api.decide(reference, url_stage, decision.model_dump(), user)
            return RedirectResponse(f"/ko/{slug}?klar={quote(reference.upper())}", status_code=303)
        except api.ApiError as exc:
            status, top = exc.status, exc.message
        except NotAllowed as exc:
            status, top = 403, exc.message
    items = queue_items(user, q)
    # No such order: the address is not shown back (RO-2026-191212121212 is shaped like a reference too).
    ref = reference.upper() if status != 404 else ""
    for it in items:
        if it.order.reference == ref:
            it.errors, it.values = {k: [msg] for k, msg in errors.items()}, values
    summary = _summary([(f"{ref}-{FIRST_INPUT.get(k, k)}", f"{ref} – {DECISION_LABELS.get(k, k)}", m)
                        for k, m in errors.items()])
    if top:
        summary.insert(0, {"href": f"#{ref}" if any(i.order.reference == ref for i in items) else "#main",
                           "text": f"{ref}: {top}" if ref else top})
    return _queue_page(request, user, slug, items, status, summary)


def masked(pnr: str) -> str:
    return personnummer.mask(pnr)


templates.env.globals.update(masked=masked)
