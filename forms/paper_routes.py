"""HTTP endpoints of the paper routine (reservrutin).

- `POST /api/paper-orders` (support): register a received, signed paper order. 201 with reference and
  status; 422 with every field error at once, in the contract's shape; 409 when the referenced order is
  not waiting on paper (it already continued digitally, or ended).
- `POST /api/orders/{reference}/resume-digital` (support, admin): the execution system is back; the order
  in `paper_fallback` continues digitally from the stage it was at.
- `POST /api/paper-forms/{order_type}.pdf` (a clinician): "fill in digitally, print, sign" when the orders
  database or Prefect is down. The body of `POST /api/orders` (JSON, or the order form's own fields) is
  printed on the paper form; nothing is stored and Prefect is not involved. See `print_filled`.

Identity: as everywhere in the app, the SSO proxy's `X-Remote-User` from a trusted proxy address, else
the embedded login's session cookie (`forms.urgent_routes.current_staff`); a JSON post authenticated by
the cookie carries `X-CSRF-Token`. Roles come from the staff directory. The app's exception handlers
turn `NotAuthenticated`/`NotAllowed`/`ApiError` into the contract's 401/403/4xx JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from flows.fallback import resume_digital
from forms.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    USER_HEADER,
    NotAllowed,
    NotAuthenticated,
    User,
    check_api_csrf,
    check_form_csrf,
    cookie_revoked,
    csrf_ok,
    require_roles,
    session_data,
    trusted_peer,
)
from forms.deps import adapters
from forms.deps import now as current_time
from forms.errors import ApiError, checked_reference, json_body
from forms.pages.common import form_str, render
from forms.pages.order_forms import form_page, form_values, to_raw
from forms.responses import responses
from forms.urgent_routes import current_staff
from models import personnummer, phone
from models.calendar import local
from models.reference import REFERENCE
from models.rules import RuleContext, check_order
from models.schemas import ORDER_TYPE_LABELS_SV, ORDER_TYPES, ErrorResponse, Problem
from models.status import LABELS_SV, OrderStatus
from models.tables import AuditEvent, CareUnit, Order, OutboxMessage, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.paper import PaperOrder, paper_region, render_pdf
from tasks.steps import orders
from tasks.steps.paper_fallback import event_name
from tasks.steps.paper_orders import (
    REGISTER_ROLES,
    RESUME_ROLES,
    PaperInvalid,
    fallback_occasions,
    paper_field_errors,
    register_paper_order,
)


class PaperOrderResponse(BaseModel):
    reference: str
    status: str
    channel: str
    continued: bool = False
    warnings: list[Problem] = []


class ResumeResponse(BaseModel):
    reference: str
    status: str


def caller(request: Request) -> User:
    """Who is asking: the trusted proxy's `X-Remote-User`, else the embedded login's cookie (then a JSON
    post must carry the CSRF header). 401 without either."""
    user = current_staff(request)
    if request.method == "POST":
        check_api_csrf(request, user)
    return user




def _require(user: User, *roles: str) -> None:
    if not user.has(*roles):
        raise NotAllowed("Du har inte behörighet till detta.", "wrong_role")


ERRORS = responses(401, 403, 404, 409, 422, 503)
PAPER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"allOf": [
    {"$ref": "#/components/schemas/OrderRequest"},
    {"type": "object", "required": ["received_on", "signature_checked"], "properties": {
        "reference": {"type": "string", "pattern": REFERENCE.pattern,
                      "description": "Referensen tryckt på en förifylld blankett. En beställning i "
                                     "paper_fallback med den referensen fortsätter där den var."},
        "received_on": {"type": "string", "format": "date", "description": "Dag blanketten kom in"},
        "signature_checked": {"type": "boolean", "description": "Underskriften kontrollerad (måste vara true)"},
        "orderer_hsa_id": {"type": "string", "description": "Beställaren som skrivit under (standard: den "
                                                            "som registrerar)"},
    }}]}}}}}

router = APIRouter(prefix="/api", tags=["paper"], responses=ERRORS)


@router.post("/paper-orders", status_code=201, response_model=PaperOrderResponse, openapi_extra=PAPER_BODY,
             summary="Registrera en inkommen, underskriven pappersbeställning (support)",
             responses={200: {"model": PaperOrderResponse, "description": "Samma Idempotency-Key och kropp"},
                        422: {"model": ErrorResponse, "description": "Alla fel på en gång"}})
async def register(request: Request, user: User = Depends(caller), ad: Adapters = Depends(adapters)) -> Any:
    _require(user, "support")
    raw = await json_body(request)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not (0 < len(key) <= 120 and key.isascii() and key.isprintable() and " " not in key):
        raise ApiError(422, "invalid_value", "Idempotency-Key ska vara 1–120 synliga ASCII-tecken.",
                       field="Idempotency-Key")
    try:
        out = await register_paper_order(ad, raw, user.hsa_id, idempotency_key=key)
    except PaperInvalid as exc:
        return JSONResponse({"errors": [e.model_dump() for e in exc.errors]}, status_code=422)
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen väntar inte på en pappersblankett (den har fortsatt "
                                            "digitalt eller är avslutad), eller Idempotency-Key har använts "
                                            "med en annan kropp.") from None
    with ad.db.session() as s:
        channel = orders.get(s, out.reference).channel
    body = PaperOrderResponse(reference=out.reference, status=out.status, channel=channel,
                              continued=out.kind == "continued", warnings=out.warnings)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if out.kind == "replayed" else 201)


@router.post("/orders/{reference}/resume-digital", response_model=ResumeResponse,
             summary="Återuppta digitalt efter reservrutin (support eller admin)")
async def resume(reference: str, user: User = Depends(caller), ad: Adapters = Depends(adapters)) -> ResumeResponse:
    _require(user, "support", "admin")
    ref = checked_reference(reference)
    try:
        order = await resume_digital(ad, ref, user.hsa_id)
    except orders.NotFound:
        raise ApiError(404, "not_found", "Beställningen finns inte.") from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen ligger inte i reservrutinen (paper_fallback).") from None
    return ResumeResponse(reference=order.reference, status=order.status)




# --- "fill in digitally, print, sign" -------------------------------------------------------------------

log = logging.getLogger(__name__)
CARE_ONLY = ("block_guardian", "minor_access")
# What is merely not answered yet is left blank on the paper, for the signer to fill in or tick by hand;
# support checks the signed form against every rule when it registers it. Everything else the rule engine
# says is a wrong answer, which would be just as wrong on paper: that is refused (422), so a form that can
# only be rejected does not travel by internal mail for days first.
GAPS = ("required", "identity_check_required", "consent_required")
# ... except that the form cannot be printed at all without knowing whose form it is.
NEEDED = ("", "order_type", "region")


@dataclass
class Printer:
    """Who prints, and what the orders database could tell (nothing when it is down)."""
    ad: Adapters
    hsa_id: str
    via: str
    person: User | None = None
    database: bool = False
    units: list[CareUnit] = field(default_factory=list)


def _printer(request: Request) -> Printer:
    """The authenticated HSA-id without needing the database: the trusted proxy's header, or the signed
    session cookie, which the embedded login sets only for a person in the staff directory. With the
    database up the person and their role are looked up as everywhere else."""
    ad = adapters(request)
    header = request.headers.get(USER_HEADER, "").strip()
    if header and trusted_peer(request):
        who = Printer(ad, header.upper(), "header")
    elif ad.settings.embedded_login and (hsa := session_data(request).hsa_id):
        who = Printer(ad, hsa, "cookie")
    else:
        raise NotAuthenticated()
    try:
        with ad.db.session() as s:
            revoked = who.via == "cookie" and cookie_revoked(request, s)
            person = None if revoked else directory.staff(s, who.hsa_id)
            units = list(s.scalars(select(CareUnit).order_by(CareUnit.region, CareUnit.name)))
            for u in units:
                s.expunge(u)
    except OperationalError as exc:
        log.warning("orders database unavailable: printing a paper form without the directory (%s)",
                    type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        return who
    if person is None:
        raise NotAuthenticated()
    who.person = User(person.hsa_id, person.name, tuple(person.roles), person.unit_hsa_id, person.region,
                      "header" if who.via == "header" else "cookie")
    who.database, who.units = True, units
    if not who.person.has("clinician"):
        raise NotAllowed("Endast vårdpersonal kan fylla i beställningar.", "wrong_role")
    return who


def _rule_context(raw: Mapping[str, Any], who: Printer, now: datetime) -> RuleContext:
    if who.database:
        try:
            with who.ad.db.session() as s:
                return orders.rule_context(who.ad, s, dict(raw), now, who.hsa_id, "print")
        except OperationalError:
            who.database = False
    # Without the database: the care-unit directory and the patient's current restrictions are unknown,
    # so those rules wait for the registration; everything else is checked as usual.
    return RuleContext(now=now, care_units={}, region_hours={c: r.hours for c, r in who.ad.regions.items()})


def check_printable(order_type: str, raw: Any, who: Printer, now: datetime) -> tuple[list[Problem], list[Problem]]:
    """(what stops the print, what is left blank on the paper)."""
    if not isinstance(raw, Mapping):
        return [Problem(field="", code="invalid_value", message="Förväntade ett JSON-objekt.")], []
    if raw.get("order_type") not in (None, "", order_type):
        return [Problem(field="order_type", code="invalid_value",
                        message=f"Blanketten gäller {order_type}; beställningstypen stämmer inte.")], []
    body = {**raw, "order_type": order_type}
    problems = check_order(body, _rule_context(body, who, now)).errors
    if not who.database:
        problems = [p for p in problems if p.code != "unknown_care_unit"]
    blocking = [p for p in problems if p.field in NEEDED or p.code not in GAPS]
    return blocking, [p for p in problems if p not in blocking]


def _number(raw: Mapping[str, Any], name: str, now: datetime) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        return ""
    return personnummer.parse(value, local(now).date()).formatted()  # checked already: it parses


def printable_order(order_type: str, raw: Mapping[str, Any], who: Printer, now: datetime) -> PaperOrder:
    """The posted values as a paper form; every value present has passed `check_printable`."""
    minor = raw.get("minor_access") if order_type == "minor_access" else None
    minor = minor if isinstance(minor, Mapping) else {}
    recipient = minor.get("recipient") or None
    to_guardian = order_type == "block_guardian" or recipient == "guardian"
    unit_id = str(raw.get("care_unit_hsa_id") or "").strip().upper()
    unit = next((u for u in who.units if u.hsa_id == unit_id), None)
    return PaperOrder(
        reference="", order_type=order_type,
        initiative="care" if order_type in CARE_ONLY else (raw.get("initiative") or None),
        actions=list(raw.get("actions") or []) if order_type in ("seal_or_lock", "restore_access") else [],
        patient_personal_number=_number(raw, "patient_personal_number", now), patient_name=None,
        patient_protected_identity=bool(raw.get("patient_protected_identity")),
        guardian_personal_number=_number(raw, "guardian_personal_number", now) if to_guardian else None,
        minor_access_grant=minor.get("grant"), minor_access_recipient=recipient,
        child_consent=minor.get("child_consent") if recipient == "guardian" else None,
        identity_checked_in_person=bool(raw.get("identity_checked_in_person")), urgent=bool(raw.get("urgent")),
        reason=str(raw.get("reason") or ""), care_unit_hsa_id=unit_id, care_unit_name=unit.name if unit else None,
        orderer_name=who.person.name if who.person else None, orderer_hsa_id=who.hsa_id,
        created_at=f"{local(now):%Y-%m-%d %H:%M}",
        needs_head_signature=True,  # every order type is approved (models/rules.py::plan_stages)
        guardian_protected_identity=to_guardian and bool(raw.get("guardian_protected_identity")),
        callback_phone=phone.national(n) if (n := phone.normalise(str(raw.get("callback_phone") or ""))) else None,
    )


def _audit_print(who: Printer, order_type: str, region: str, raw: Mapping[str, Any], gaps: list[Problem],
                 now: datetime) -> None:
    """Printing shows a patient's number on paper, so it is audited where personal data may be: in the
    orders database's audit log, with the patient's number in its column. When that database is down
    nothing can be audited and nothing is recorded elsewhere (a process log may not hold the number);
    the signed form comes back to support and its registration is audited then."""
    if not who.database:
        log.info("paper form printed without an audit row: orders database unavailable (%s, %s)",
                 order_type, region)
        return
    try:
        pnr = _number(raw, "patient_personal_number", now).replace("-", "") or None
        with who.ad.db.session() as s:
            audit.record(s, actor=who.hsa_id, action="paper_form_printed", patient_pnr=pnr, channel="paper",
                         at=now, detail={"order_type": order_type, "region": region, "stored": False,
                                         "blank_fields": sorted({g.field for g in gaps})})
    except OperationalError:
        log.info("paper form printed without an audit row: orders database failed (%s, %s)", order_type, region)


PRINT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PrintableOrder"}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "description":
                                                     "The order form's own fields, with csrf_token"}}}}}


@router.post("/paper-forms/{order_type}.pdf", response_class=Response, openapi_extra=PRINT_BODY,
             summary="Ifylld pappersblankett från formulärets uppgifter, utan att spara något (reservrutin)",
             responses={200: {"content": {"application/pdf": {}},
                              "description": "PDF (A4, PDF/UA-1); X-Blank-Fields: fält som fylls i för hand"},
                        422: {"model": ErrorResponse, "description": "Fel som skulle vara fel även på papper"}})
async def print_filled(order_type: str, request: Request,
                       region: str | None = Query(default=None, examples=["kalmar"])) -> Response:
    """Works with the orders database and Prefect down: the PDF is made from what was posted.

    The answers are checked by the same rule engine as a submit. A field not answered yet is left blank on
    the paper (the signer fills it in by hand; support checks the signed form when registering it), and
    `X-Blank-Fields` lists those fields. A wrong answer is refused with 422 and every problem at once, as a
    submit would. No reference is printed ("Referens: fylls i av supporten"): nothing is stored, so there
    is no order yet. The region (postal route, phone) is the care unit's when the directory answers, else
    the body's `region`, else `?region=`."""
    if order_type not in ORDER_TYPES:
        raise ApiError(404, "not_found", "Okänd beställningstyp.")
    if region and region not in adapters(request).regions:
        raise ApiError(422, "invalid_value", f"Okänd region. Tillåtna värden: {', '.join(adapters(request).regions)}.",
                       field="region")
    now = current_time(request)
    who = await run_in_threadpool(_printer, request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    html = ctype in ("application/x-www-form-urlencoded", "multipart/form-data")
    values: dict[str, Any] = {}
    if html:
        form = await request.form()
        check_form_csrf(request, form_str(form, CSRF_FIELD))
        # Without the directory the care unit's region is unknown: the form's `?region=` (the page's) is used.
        person = who.person or User(who.hsa_id, "", (), None, region, "cookie")
        values = form_values(order_type, form, person)
        raw: Any = to_raw(order_type, values, person, who.units)
    else:
        if who.via == "cookie" and not csrf_ok(request, request.headers.get(CSRF_HEADER)):
            raise NotAllowed("Ogiltig eller saknad CSRF-token (X-CSRF-Token).", "csrf_failed")
        raw = await json_body(request)
        if isinstance(raw, Mapping) and raw.get("region") in (None, "") and region:  # a wrong type stays wrong
            raw = {**raw, "region": region}
    blocking, gaps = await run_in_threadpool(check_printable, order_type, raw, who, now)
    if blocking:
        if html:
            return _print_refused_page(request, who, order_type, values, blocking)
        return JSONResponse({"errors": [p.model_dump() for p in blocking],
                             "blank_fields": sorted({g.field for g in gaps})}, status_code=422)
    assert isinstance(raw, Mapping)
    order = printable_order(order_type, raw, who, now)
    code = str(raw["region"])
    data = await run_in_threadpool(render_pdf, order_type, paper_region(who.ad.region(code), demo=who.ad.settings.demo), order)
    await run_in_threadpool(_audit_print, who, order_type, code, raw, gaps, now)
    return Response(data, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{order_type}-{code}-ifylld.pdf"', "Cache-Control": "no-store",
        "X-Blank-Fields": ",".join(sorted({g.field for g in gaps}))})


def _print_refused_page(request: Request, who: Printer, order_type: str, values: dict[str, Any],
                        problems: list[Problem]) -> Response:
    if who.database and who.person is not None:
        # The order form again, with the values kept and the errors shown as after a submit.
        return form_page(request, who.person, order_type, values, problems, status=422)
    return render(request, "paper_print_errors.html.j2", {
        "user": None, "title": "Fel: blanketten kan inte skrivas ut", "problems": problems,
        "order_type": order_type, "region": request.query_params.get("region") or "",
    }, status=422)


__all__ = ["router", "caller", "print_filled"]


# --- the support centre's page: /pappersbestallningar ---------------------------------------------------

pages_router = APIRouter(include_in_schema=False)
PAGE = "/pappersbestallningar"
VIEW_ROLES = ("support", "on_call", "admin")
# Rule-engine and registration field names -> the page's form group; and the element a summary link focuses.
GROUP_OF = {"minor_access": "minor_grant", "minor_access.grant": "minor_grant",
            "minor_access.recipient": "minor_recipient", "minor_access.child_consent": "child_consent",
            "region": "care_unit_hsa_id"}
ANCHOR_OF = {"order_type": "order_type-seal_or_lock", "initiative": "initiative-patient",
             "actions": "actions-seal_journal", "minor_grant": "minor_grant-grant",
             "minor_recipient": "minor_recipient-minor"}
LABELS = {"reference": "Referens", "received_on": "Mottagen, datum", "signature_checked": "Underskrifter",
          "orderer_hsa_id": "Beställarens HSA-id", "order_type": "Beställningstyp",
          "patient_personal_number": "Patientens personnummer", "patient_protected_identity": "Skyddade personuppgifter",
          "initiative": "Initiativ", "actions": "Åtgärd", "identity_checked_in_person": "Identitetskontroll",
          "guardian_personal_number": "Vårdnadshavarens personnummer", "minor_grant": "Ge eller ta bort tillgång",
          "minor_recipient": "Tillgång för", "child_consent": "Barnets samtycke", "urgent": "Brådskande",
          "reason": "Skäl", "care_unit_hsa_id": "Beställande vårdenhet"}
FORM_ORDER = tuple(LABELS)
NOTICES = {"registrerad": "Pappersbeställningen {ref} är registrerad ({status}).",
           "aterupptagen": "Beställningen {ref} är återupptagen digitalt ({status})."}
NUMBER_NEEDED = "Fyll i patientens personnummer från blanketten; det kontrolleras mot beställningen."


@dataclass
class WaitingItem:
    order: Any
    unit_name: str
    fell_back_at: datetime | None
    told: bool


def _waiting(ad: Adapters, user: User) -> list[WaitingItem]:
    with ad.db.session() as s:
        q = select(Order).where(Order.status == OrderStatus.PAPER_FALLBACK.value).order_by(Order.id).limit(200)
        if user.region:
            q = q.where(Order.region == user.region)
        items = []
        for o in s.scalars(q):
            at = s.scalar(select(AuditEvent.at).where(AuditEvent.order_reference == o.reference,
                                                      AuditEvent.to_status == "paper_fallback")
                          .order_by(AuditEvent.id.desc()).limit(1))
            prefix = f"<{o.reference}.{event_name(fallback_occasions(s, o.reference))}."
            told = s.scalar(select(OutboxMessage.id).where(OutboxMessage.message_id.startswith(prefix))) is not None
            unit = directory.unit(s, o.care_unit_hsa_id)
            s.expunge(o)
            items.append(WaitingItem(o, unit.name if unit else o.care_unit_hsa_id, at, told))
        return items


def _recent(ad: Adapters, user: User) -> list[dict[str, Any]]:
    """The latest registrations, with what support recorded (signature checked) from their audit rows."""
    with ad.db.session() as s:
        q = (select(AuditEvent).join(Order, Order.reference == AuditEvent.order_reference)
             .where(AuditEvent.action == "paper_registered").order_by(AuditEvent.id.desc()).limit(20))
        if user.region:
            q = q.where(Order.region == user.region)
        names = {p.hsa_id: p.name for p in s.scalars(select(Staff))}
        return [{"reference": e.order_reference, "received_on": (e.detail or {}).get("received_on", "–"),
                 "signature_checked": bool((e.detail or {}).get("signature_checked")),
                 "registered_by": names.get(e.actor, e.actor), "continued": bool((e.detail or {}).get("continued"))}
                for e in s.scalars(q)]


def _blank_values(today: str, reference: str = "") -> dict[str, Any]:
    return {"reference": reference, "received_on": today,
            "signature_checked": False, "orderer_hsa_id": "", "order_type": "", "patient_personal_number": "",
            "patient_protected_identity": False, "initiative": "", "actions": [], "identity_checked_in_person": False,
            "guardian_personal_number": "", "minor_grant": "", "minor_recipient": "", "child_consent": False,
            "urgent": False, "reason": "", "care_unit_hsa_id": ""}


def _page(request: Request, user: User, values: dict[str, Any] | None = None, problems: list[Problem] | None = None,
          status: int = 200, notice: str | None = None) -> Response:
    errors: dict[str, list[str]] = {}
    for p in problems or []:
        group = GROUP_OF.get(p.field, p.field)
        errors.setdefault(group if group in LABELS else "", []).append(p.message)
    listed = sorted(errors.items(), key=lambda kv: FORM_ORDER.index(kv[0]) if kv[0] in FORM_ORDER else -1)
    summary = [{"href": f"#{ANCHOR_OF.get(g, g)}" if g else "#paper-form",
                "text": f"{LABELS[g]}: {msg}" if g else msg} for g, msgs in listed for msg in msgs]
    ad = adapters(request)
    today = _today(request)
    with ad.db.session() as s:
        units = list(s.scalars(select(CareUnit).where(*([CareUnit.region == user.region] if user.region else []))
                               .order_by(CareUnit.name)))
    return render(request, "paper_orders.html.j2", {
        "user": user, "title": ("Fel: " if summary else "") + "Pappersbeställningar (reservrutin)",
        "items": _waiting(ad, user), "recent": _recent(ad, user), "v": values or _blank_values(today),
        "errors": errors, "summary": summary, "notice": notice, "units": units, "today": today,
        "types": [(t, ORDER_TYPE_LABELS_SV[t]) for t in ORDER_TYPES],
        "may_register": user.has(*REGISTER_ROLES), "may_resume": user.has(*RESUME_ROLES),
    }, status)


def _page_user(request: Request) -> User:
    user = current_staff(request)
    require_roles(user, *VIEW_ROLES)
    return user


async def _page_post(request: Request, roles: tuple[str, ...], refused: str) -> tuple[User, Any]:
    """The person and the form of a post on the page, after its CSRF check and the action's role check."""
    user = _page_user(request)
    form = await request.form()
    check_form_csrf(request, form_str(form, CSRF_FIELD))
    if not user.has(*roles):
        raise NotAllowed(refused, "wrong_role")
    return user, form


@pages_router.get(PAGE, response_class=HTMLResponse)
def paper_orders_page(request: Request, referens: str = "", registrerad: str = "", aterupptagen: str = "") -> Response:
    user = _page_user(request)
    notice = None
    for key, ref in (("registrerad", registrerad), ("aterupptagen", aterupptagen)):
        if REFERENCE.fullmatch(ref):  # never echo anything else from the address
            with adapters(request).db.session() as s:
                st = orders.get(s, ref.upper()).status
            notice = NOTICES[key].format(ref=ref.upper(), status=LABELS_SV[OrderStatus(st)].lower())
    prefill = referens.strip().upper() if REFERENCE.fullmatch(referens.strip()) else ""
    return _page(request, user, _blank_values(_today(request), prefill), notice=notice)


def _today(request: Request) -> str:
    return local(current_time(request)).date().isoformat()


def _posted(form: Any, user: User, units: list[CareUnit], today: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the page shows again, the registration body of POST /api/paper-orders)."""
    v = _blank_values(today)
    for name in ("reference", "received_on", "orderer_hsa_id", "order_type", "patient_personal_number", "initiative",
                 "guardian_personal_number", "minor_grant", "minor_recipient", "reason", "care_unit_hsa_id"):
        v[name] = form_str(form, name)
    for name in ("signature_checked", "patient_protected_identity", "identity_checked_in_person", "child_consent",
                 "urgent"):
        v[name] = name in form
    v["actions"] = [a for a in form.getlist("actions") if isinstance(a, str)]
    raw: dict[str, Any] = {"received_on": v["received_on"], "signature_checked": v["signature_checked"],
                           "orderer_hsa_id": v["orderer_hsa_id"] or None}
    if v["reference"]:
        # A printed form: the fields given must agree with the order the reference points at.
        raw["reference"] = v["reference"]
        raw |= {k: v[k] for k in ("order_type", "patient_personal_number", "care_unit_hsa_id") if v[k]}
        return v, raw
    order_type = v["order_type"] if v["order_type"] in ORDER_TYPES else "seal_or_lock"
    raw |= to_raw(order_type, {**v, "idempotency_key": ""}, user, units)
    raw["order_type"] = v["order_type"] or None
    return v, raw


@pages_router.post(PAGE)
async def register_form(request: Request) -> Response:
    user, form = await _page_post(request, REGISTER_ROLES, "Mottagna pappersblanketter registreras av supporten.")
    ad = adapters(request)
    with ad.db.session() as s:
        units = list(s.scalars(select(CareUnit)))
        for u in units:
            s.expunge(u)
    values, raw = _posted(form, user, units, _today(request))
    problems: list[Problem] = []
    if values["reference"] and not values["patient_personal_number"]:
        # People copy references off paper: the patient's number makes sure it is the right order.
        problems = [Problem(field="patient_personal_number", code="required", message=NUMBER_NEEDED)]
        problems += await run_in_threadpool(paper_field_errors, ad, raw, current_time(request))
        return _page(request, user, values, problems, 422)
    try:
        out = await register_paper_order(ad, raw, user.hsa_id)
    except PaperInvalid as exc:
        return _page(request, user, values, exc.errors, 422)
    except orders.Forbidden as exc:
        return _page(request, user, values, [Problem(field="", code=exc.refusal.code, message=exc.refusal.message)], 403)
    except orders.Conflict:
        message = "Beställningen väntar inte på en pappersblankett: den har redan fortsatt digitalt eller är avslutad."
        return _page(request, user, values, [Problem(field="reference", code="wrong_status", message=message)], 409)
    return RedirectResponse(f"{PAGE}?registrerad={out.reference}", status_code=303)


@pages_router.post(PAGE + "/{reference}/digitalt")
async def resume_form(request: Request, reference: str) -> Response:
    user, _ = await _page_post(request, RESUME_ROLES, "Endast supporten eller en administratör kan återuppta digitalt.")
    ref = checked_reference(reference)
    try:
        await resume_digital(adapters(request), ref, user.hsa_id)
    except orders.NotFound:
        raise ApiError(404, "not_found", "Beställningen finns inte.") from None
    except orders.Forbidden as exc:
        return _page(request, user, problems=[Problem(field="", code=exc.refusal.code, message=exc.refusal.message)],
                     status=403)
    except orders.Conflict:
        message = f"{ref} ligger inte längre i reservrutinen (den har redan återupptagits eller avslutats)."
        return _page(request, user, problems=[Problem(field="", code="wrong_status", message=message)], status=409)
    return RedirectResponse(f"{PAGE}?aterupptagen={ref}", status_code=303)


__all__ += ["pages_router"]
