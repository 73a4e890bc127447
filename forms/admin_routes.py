"""Monitoring for administrators, and the review outcome for heads of department: pages and JSON.

`router` is a plain APIRouter; the app includes it (`app.include_router(admin_routes.router)`).

Pages (Swedish, no JavaScript needed):
  GET  /admin                      counts by status and region, the red list (overdue), filters
  GET  /admin/avvikelser           deviations (avvikelser)
  GET  /admin/omprovningar         reviews due
  GET  /admin/logg                 log extract for one patient, sample checks
  POST /admin/logg/patient         the extract (the personal number travels in the body, never in a URL)
  POST /admin/logg/stickprov       a sample check
  GET  /omprovningar               head of department: the unit's reviews due, with the outcome forms
  POST /omprovningar/{reference}   head of department: record keep / restore
JSON:
  GET  /api/admin/overview | /api/admin/overdue | /api/admin/deviations | /api/admin/reviews
  GET  /api/admin/orders.csv       CSV without personal numbers
  POST /api/admin/patient-log      {"personal_number": "..."}
  POST /api/admin/sample-check     {"days": 30, "size": 20, "seed": null}
  POST /api/orders/{reference}/review   {"outcome": "keep" | "restore"}   (head of department of the unit)

Identity: `forms.auth.identify` (X-Remote-User from a trusted proxy, else the embedded login's session
cookie), roles from the staff directory. No identity: 401; wrong role: 403. The errors subclass both the
app's NotAuthenticated/NotAllowed (so inside the app they get the app's answers: login redirect for pages,
the contract's JSON for the API) and HTTPException (so the router also works on a bare FastAPI()).
Time comes from the `now` dependency (tests override it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import select

from flows import review as review_flow
from forms.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    NotAllowed,
    NotAuthenticated,
    User,
    csrf_ok,
    identify,
    session_data,
    set_session,
)
from forms.deps import adapters, now
from forms.errors import checked_reference
from forms.responses import responses
from models import personnummer, sla, swedish
from models.calendar import local
from models.reference import REFERENCE
from models.schemas import ORDER_TYPE_LABELS_SV
from models.status import LABELS_SV, OrderStatus
from models.tables import CareUnit, Order
from tasks.adapters import Adapters, audit
from tasks.steps import audit_extract, monitoring, orders

router = APIRouter(tags=["monitoring"])
TEMPLATES = Path(__file__).resolve().parent / "templates"
CSV_COLUMNS = ("reference", "type", "region", "unit", "status", "urgent", "created", "due", "overdue")
OUTCOME_LABELS = {"keep": "Behåll begränsningen", "restore": "Häv begränsningen (beställ återställande)"}


# --- identity --------------------------------------------------------------------------------------------

def _problem(code: str, message: str, field: str = "") -> dict[str, Any]:
    return {"errors": [{"field": field, "code": code, "message": message}]}


class Unauthenticated(NotAuthenticated, HTTPException):
    def __init__(self) -> None:
        NotAuthenticated.__init__(self)
        HTTPException.__init__(self, 401, _problem("not_authenticated", "Du är inte inloggad (ingen identitet)."))


class Refused(NotAllowed, HTTPException):
    def __init__(self, message: str, code: str = "wrong_role") -> None:
        NotAllowed.__init__(self, message, code)
        HTTPException.__init__(self, 403, _problem(code, message))


def current_user(request: Request) -> User:
    user = identify(request)
    if user is None:
        raise Unauthenticated()
    return user


def admin_user(request: Request) -> User:
    user = current_user(request)
    if not user.has("admin"):
        raise Refused("Sidan är till för administratörer (kräver roll: administratör).")
    return user


def head_user(request: Request) -> User:
    user = current_user(request)
    if not user.has("head_of_department"):
        raise Refused("Omprövning registreras av verksamhetschefen (kräver roll: verksamhetschef).")
    return user


def _check_json_post(request: Request, user: User) -> None:
    """Only JSON (a cross-site form cannot send it), and the CSRF header when the session cookie authenticates."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, _problem("unsupported_media_type", "Skicka JSON (Content-Type: application/json)."))
    if user.via == "cookie" and not csrf_ok(request, request.headers.get(CSRF_HEADER)):
        raise Refused("Ogiltig eller saknad CSRF-token (X-CSRF-Token).", "csrf_failed")


def _check_form_csrf(request: Request, token: Any) -> None:
    if not csrf_ok(request, token if isinstance(token, str) else None):
        raise Refused("Formuläret har gått ut eller kom inte från den här tjänsten. Ladda om sidan och försök igen.",
                      "csrf_failed")


def _error(status: int, code: str, message: str, field: str = "") -> JSONResponse:
    return JSONResponse(_problem(code, message, field), status_code=status)


# --- filters and rows --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    region: str | None = None
    status: str | None = None

    def query(self) -> str:
        parts = [f"region={self.region}" if self.region else "", f"status={self.status}" if self.status else ""]
        return "&".join(p for p in parts if p)


class BadFilter(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def parse_filters(ad: Adapters, region: str | None, status: str | None) -> Filters:
    region = (region or "").strip().lower() or None
    status = (status or "").strip().lower() or None
    if region and region not in ad.regions:
        raise BadFilter("region", f"Okänd region. Tillåtna värden: {', '.join(ad.regions)}.")
    if status and status not in {s.value for s in OrderStatus}:
        raise BadFilter("status", f"Okänd status. Tillåtna värden: {', '.join(s.value for s in OrderStatus)}.")
    return Filters(region, status)


def _filters_or_422(ad: Adapters, region: str | None, status: str | None) -> Filters | JSONResponse:
    """The API takes the values `/openapi.json` lists, exactly (empty: no filter); the pages' forms are
    read more leniently (parse_filters)."""
    try:
        if region not in (None, "", *ad.regions):
            raise BadFilter("region", f"Okänd region. Tillåtna värden: {', '.join(ad.regions)}.")
        if status not in (None, "", *(s.value for s in OrderStatus)):
            raise BadFilter("status", "Okänd status.")
        return parse_filters(ad, region, status)
    except BadFilter as exc:
        return _error(422, "invalid_value", exc.message, exc.field)


def _iso(at: datetime | None) -> str | None:
    return local(at).isoformat() if at is not None else None


def order_row(o: Order, at: datetime) -> dict[str, Any]:
    """An order as the monitoring pages show it: no personal number, no free text."""
    late = sla.is_overdue(o.due_at, o.status, at)
    return {"reference": o.reference, "order_type": o.order_type, "initiative": o.initiative, "region": o.region,
            "care_unit_hsa_id": o.care_unit_hsa_id, "status": o.status, "urgent": o.urgent,
            "created_at": _iso(o.created_at), "due_at": _iso(o.due_at), "overdue": late,
            "minutes_late": sla.minutes_late(o.due_at, at) if late and o.due_at else 0}


def overview_data(ad: Adapters, at: datetime, f: Filters) -> dict[str, Any]:
    with ad.db.session() as s:
        counts = monitoring.open_order_counts(s, at, f.region, f.status)
        red = [order_row(o, at) for o in monitoring.overdue_orders(s, at, f.region, f.status)]
        n_deviations = monitoring.deviation_count(s, f.region)
        n_reviews = len(monitoring.reviews_due(s, at, f.region))
    by_status: dict[str, int] = {}
    by_region: dict[str, int] = {}
    for c in counts:
        by_status[c.status] = by_status.get(c.status, 0) + c.open
        by_region[c.region] = by_region.get(c.region, 0) + c.open
    return {"generated_at": _iso(at), "filters": {"region": f.region, "status": f.status},
            "counts": [{"region": c.region, "status": c.status, "open": c.open, "overdue": c.overdue} for c in counts],
            "by_status": by_status, "by_region": by_region,
            "open_total": sum(c.open for c in counts), "overdue_total": sum(c.overdue for c in counts),
            "overdue": red, "deviations_total": n_deviations, "reviews_due_total": n_reviews,
            "stalled_decisions": stalled_rows(ad, at)}


def stalled_rows(ad: Adapters, at: datetime) -> list[dict[str, Any]]:
    """Stored decisions that have not moved their order on (tasks/steps/runs.py): the order's run is stuck."""
    from tasks.steps.runs import stalled_decisions
    return [{"reference": x.reference, "stage": x.stage, "waited_minutes": round(x.waited_seconds / 60, 1)}
            for x in stalled_decisions(ad, at)]


def deviation_rows(ad: Adapters, region: str | None) -> list[dict[str, Any]]:
    with ad.db.session() as s:
        rows = monitoring.deviations(s, region)
    return [{"reference": d.reference, "kind": d.kind, "minutes_late": d.minutes_late, "at": _iso(d.at),
             "region": d.region, "care_unit_hsa_id": d.unit_hsa_id, "status": d.status} for d in rows]


def review_rows(ad: Adapters, at: datetime, region: str | None = None,
                units: list[str] | None = None) -> list[dict[str, Any]]:
    with ad.db.session() as s:
        rows = monitoring.reviews_due(s, at, region, unit_hsa_ids=units)
    return [{"reference": r.reference, "order_type": r.order_type, "region": r.region,
             "care_unit_hsa_id": r.unit_hsa_id, "review_due_on": _iso(r.review_due_on), "period": r.period,
             "reminder_sent": r.reminded, "restore_possible": r.order_type in sla.RESTORABLE_TYPES} for r in rows]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet must never read a cell as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_line(values: tuple[Any, ...]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return out.getvalue()


def orders_csv(ad: Adapters, at: datetime, f: Filters, overdue_only: bool | None,
               batch: int | None = None) -> Iterator[str]:
    """The export as CSV text, one chunk per batch of rows read: every order the filters select, however many."""
    batch = batch or monitoring.EXPORT_BATCH
    yield _csv_line(CSV_COLUMNS)
    with ad.db.session() as s:
        chunk: list[str] = []
        for o in monitoring.orders_for_export(s, at, f.region, f.status, overdue_only, batch=batch):
            late = sla.is_overdue(o.due_at, o.status, at)
            chunk.append(_csv_line((o.reference, o.order_type, o.region, o.unit_hsa_id, o.status,
                                    "true" if o.urgent else "false", _iso(o.created_at), _iso(o.due_at),
                                    "true" if late else "false")))
            if len(chunk) >= batch:
                yield "".join(chunk)
                chunk = []
        if chunk:
            yield "".join(chunk)


# --- JSON ----------------------------------------------------------------------------------------------------

@router.get("/api/admin/overview", summary="Antal per status och region, röda listan (administratör)")
def api_overview(region: str | None = Query(None), status: str | None = Query(None),
                 user: User = Depends(admin_user), at: datetime = Depends(now),
                 ad: Adapters = Depends(adapters)) -> Any:
    f = _filters_or_422(ad, region, status)
    return f if isinstance(f, JSONResponse) else overview_data(ad, at, f)


@router.get("/api/admin/overdue", summary="Röda listan: försenade beställningar (administratör)")
def api_overdue(region: str | None = Query(None), status: str | None = Query(None),
                user: User = Depends(admin_user), at: datetime = Depends(now),
                ad: Adapters = Depends(adapters)) -> Any:
    f = _filters_or_422(ad, region, status)
    if isinstance(f, JSONResponse):
        return f
    with ad.db.session() as s:
        return {"orders": [order_row(o, at) for o in monitoring.overdue_orders(s, at, f.region, f.status)]}


@router.get("/api/admin/deviations", summary="Avvikelser (administratör)")
def api_deviations(region: str | None = Query(None), user: User = Depends(admin_user),
                   ad: Adapters = Depends(adapters)) -> Any:
    f = _filters_or_422(ad, region, None)
    return f if isinstance(f, JSONResponse) else {"deviations": deviation_rows(ad, f.region)}


@router.get("/api/admin/reviews", summary="Omprövningar som är aktuella (administratör)")
def api_reviews(region: str | None = Query(None), user: User = Depends(admin_user),
                at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    f = _filters_or_422(ad, region, None)
    return f if isinstance(f, JSONResponse) else {"reviews": review_rows(ad, at, f.region)}


@router.get("/api/admin/orders.csv", response_class=Response, summary="CSV-export utan personnummer (administratör)",
            responses={200: {"content": {"text/csv": {}}}})
def api_orders_csv(region: str | None = Query(None), status: str | None = Query(None),
                   overdue: bool | None = Query(None), user: User = Depends(admin_user),
                   at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Response:
    f = _filters_or_422(ad, region, status)
    if isinstance(f, JSONResponse):
        return f
    with ad.db.session() as s:
        # Audited before the first row leaves, with the number of rows the filters select at that moment.
        n = monitoring.export_count(s, at, f.region, f.status, overdue)
        audit.record(s, actor=user.hsa_id, action="orders_exported", at=at,
                     detail={"format": "csv", "rows": n, "region": f.region, "status": f.status, "overdue": overdue})
    stamp = f"{local(at):%Y-%m-%d}"
    return StreamingResponse(orders_csv(ad, at, f, overdue), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="bestallningar-{stamp}.csv"', "Cache-Control": "no-store"})


class PatientLogRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # the declared JSON types only (no "1" for 1, no false for 0)
    personal_number: str = Field(min_length=1, max_length=20)


def _json_integer(value: Any) -> Any:
    """A JSON integer (30 or 30.0), not a boolean or a string that looks like one."""
    if isinstance(value, bool | str):
        raise ValueError("not an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class SampleCheckRequest(BaseModel):
    days: JsonInt = Field(30, ge=1, le=3660)
    size: JsonInt = Field(20, ge=1, le=500)
    seed: Annotated[int, Field(ge=0, le=2**31), BeforeValidator(_json_integer)] | None = None


@router.post("/api/admin/patient-log", summary="Loggutdrag för en patient (administratör; sökningen loggas)")
def api_patient_log(body: PatientLogRequest, request: Request, user: User = Depends(admin_user),
                    at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    _check_json_post(request, user)
    try:
        extract = audit_extract.patient_extract(ad.db, user.hsa_id, body.personal_number, at)
    except personnummer.InvalidPersonalNumber:
        return _error(422, "invalid_personal_number", "Ogiltigt personnummer eller samordningsnummer.",
                      "personal_number")
    return JSONResponse(extract.as_json(), headers={"Cache-Control": "no-store"})


@router.post("/api/admin/sample-check", summary="Stickprovskontroll av loggen (administratör; kontrollen loggas)")
def api_sample_check(body: SampleCheckRequest, request: Request, user: User = Depends(admin_user),
                     at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    _check_json_post(request, user)
    check = audit_extract.sample_check(ad.db, user.hsa_id, at, days=body.days, size=body.size, seed=body.seed)
    return JSONResponse(check.as_json(), headers={"Cache-Control": "no-store"})


class ReviewOutcome(BaseModel):
    model_config = ConfigDict(strict=True)  # the declared JSON types only (no "1" for 1, no false for 0)
    outcome: Literal["keep", "restore"]


async def _record(ad: Adapters, reference: str, user: User, outcome: str, at: datetime) -> dict[str, Any]:
    """The outcome, or raises _ReviewError with the contract's error shape."""
    ref = reference.strip().upper()
    try:
        result = await review_flow.record_outcome(ad, ref, user.hsa_id, outcome, at)
    except orders.NotFound:
        raise _ReviewError(404, [{"field": "", "code": "not_found", "message": "Beställningen finns inte."}]) from None
    except monitoring.ReviewRefused as exc:
        raise _ReviewError(exc.status, exc.errors) from None
    return {"reference": result.reference, "outcome": result.outcome, "period": result.period,
            "review_due_on": _iso(result.review_due_on), "restore_reference": result.restore_reference}


class _ReviewError(Exception):
    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__(status)
        self.status, self.errors = status, errors


@router.post("/api/orders/{reference}/review", summary="Omprövning: behåll eller häv (verksamhetschef för enheten)",
             responses=responses(401, 403, 404, 409, 422))
async def api_review(reference: str, body: ReviewOutcome, request: Request, user: User = Depends(head_user),
                     at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    _check_json_post(request, user)
    ref = checked_reference(reference)
    try:
        return await _record(ad, ref, user, body.outcome, at)
    except _ReviewError as exc:
        if exc.status == 403:
            raise Refused(exc.errors[0]["message"], exc.errors[0]["code"]) from None
        return JSONResponse({"errors": exc.errors}, status_code=exc.status)


# --- pages -------------------------------------------------------------------------------------------------

def _when(at: datetime | None) -> str:
    return swedish.when_short(at)


def _when_iso(text: str | None) -> str:
    return _when(datetime.fromisoformat(text)) if text else "–"


def _late(minutes: int) -> str:
    return swedish.duration(minutes)


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader([TEMPLATES / "admin", TEMPLATES / "pages"]), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, when_iso=_when_iso, late=_late)
    env.globals.update(status_label=lambda s: LABELS_SV.get(OrderStatus(s), s), type_label=ORDER_TYPE_LABELS_SV.get,
                       action_label=audit_extract.action_label, outcome_labels=OUTCOME_LABELS)
    return env


templates = Jinja2Templates(env=_env())

ADMIN_NAV = [("/admin", "Översikt"), ("/admin/bestallningar", "Sök"), ("/admin/statistik", "Statistik"),
             ("/admin/avvikelser", "Avvikelser"), ("/admin/omprovningar", "Omprövningar"), ("/admin/logg", "Loggutdrag")]


def _nav(user: User) -> list[tuple[str, str]]:
    items = [("/", "Start")]
    if user.has("head_of_department"):
        items.append(("/omprovningar", "Omprövning"))
    if user.has("admin"):
        items += ADMIN_NAV
    return items


def render(request: Request, user: User, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    data = session_data(request)
    regions = adapters(request).regions
    base = {"user": user, "nav": _nav(user), "path": request.url.path, "csrf": data.csrf, "csrf_field": CSRF_FIELD,
            "errors": {}, "summary": [], "notice": None,
            "regions": [(code, r.name) for code, r in regions.items()],
            "region_name": lambda c: regions[c].name if c in regions else c,
            "statuses": [(s.value, LABELS_SV[s]) for s in OrderStatus],
            "demo": adapters(request).settings.demo}
    response = templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)
    response.headers["Cache-Control"] = "no-store"  # also outside the app's middleware: names, log rows
    if data.fresh:  # so the forms can echo the CSRF token
        set_session(request, response, data)
    return response


def _filter_page_error(request: Request, user: User, exc: BadFilter) -> HTMLResponse:
    return render(request, user, "admin_error.html.j2", {"title": "Fel i filtret", "message": exc.message}, 422)


AUDIT_PROBLEMS_SV = {
    "content_changed": "radens innehåll har ändrats",
    "rewritten": "raden har skrivits om med ny hash",
    "row_missing": "rader har tagits bort",
    "row_inserted": "en rad har lagts in vid sidan av appen",
    "anchor_mismatch": "historiken har skrivits om sedan förra verifieringen",
}


def audit_chain_status(ad: Adapters) -> dict[str, Any] | None:
    """The latest verification of the audit log's hash chain, for the overview (tasks/adapters/audit_chain.py)."""
    from tasks.adapters.audit_chain import latest
    v = latest(ad.db)
    if v is None:
        return None
    return {"ok": v.ok, "when": _when(v.at), "rows": v.rows, "row_id": v.row_id, "row_seq": v.row_seq,
            "problems": v.problems, "problem": AUDIT_PROBLEMS_SV.get(v.problem or "", v.problem)}


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def overview_page(request: Request, region: str | None = None, status: str | None = None,
                  user: User = Depends(admin_user), at: datetime = Depends(now)) -> Response:
    ad = adapters(request)
    try:
        f = parse_filters(ad, region, status)
    except BadFilter as exc:
        return _filter_page_error(request, user, exc)
    data = overview_data(ad, at, f)
    regions = [f.region] if f.region else list(ad.regions)
    statuses = [s.value for s in OrderStatus if s.value in data["by_status"]]
    cells = {(c["status"], c["region"]): c for c in data["counts"]}
    return render(request, user, "overview.html.j2", {
        "title": "Översikt för administratörer", "data": data, "f": f, "matrix_regions": regions,
        "matrix_statuses": statuses, "cells": cells, "csv_query": f.query(), "now_text": _when(at),
        "audit_chain": audit_chain_status(ad)})


@router.get("/admin/avvikelser", response_class=HTMLResponse, include_in_schema=False)
def deviations_page(request: Request, region: str | None = None, user: User = Depends(admin_user)) -> Response:
    ad = adapters(request)
    try:
        f = parse_filters(ad, region, None)
    except BadFilter as exc:
        return _filter_page_error(request, user, exc)
    return render(request, user, "deviations.html.j2", {"title": "Avvikelser", "rows": deviation_rows(ad, f.region),
                                                        "f": f})


@router.get("/admin/omprovningar", response_class=HTMLResponse, include_in_schema=False)
def reviews_page(request: Request, region: str | None = None, user: User = Depends(admin_user),
                 at: datetime = Depends(now)) -> Response:
    ad = adapters(request)
    try:
        f = parse_filters(ad, region, None)
    except BadFilter as exc:
        return _filter_page_error(request, user, exc)
    return render(request, user, "reviews.html.j2", {"title": "Omprövningar som är aktuella",
                                                     "rows": review_rows(ad, at, f.region), "f": f})


@router.get("/admin/logg", response_class=HTMLResponse, include_in_schema=False)
def log_page(request: Request, user: User = Depends(admin_user)) -> Response:
    return render(request, user, "log.html.j2", {"title": "Loggutdrag och stickprov", "pnr_error": None, "extract": None,
                                           "check": None, "days": 30, "size": 20})


@router.post("/admin/logg/patient", response_class=HTMLResponse, include_in_schema=False)
async def log_patient(request: Request, user: User = Depends(admin_user), at: datetime = Depends(now)) -> Response:
    form = await request.form()
    _check_form_csrf(request, form.get(CSRF_FIELD))
    raw = form.get("personal_number")
    text = raw.strip() if isinstance(raw, str) else ""
    try:
        extract = await run_in_threadpool(audit_extract.patient_extract, adapters(request).db, user.hsa_id,
                                          text[:20], at)
    except personnummer.InvalidPersonalNumber:
        message = "Ange ett giltigt personnummer eller samordningsnummer, till exempel 19121212-1212."
        return render(request, user, "log.html.j2", {
            "title": "Fel: Loggutdrag och stickprov", "pnr_error": message, "extract": None, "check": None,
            "days": 30, "size": 20,
            "summary": [{"href": "#personal_number", "text": f"Personnummer: {message}"}]}, 422)
    return render(request, user, "log.html.j2", {"title": "Loggutdrag för en patient", "pnr_error": None,
                                           "extract": extract, "check": None, "days": 30, "size": 20})


def _int_field(form: Any, name: str, default: int, low: int, high: int) -> int | None:
    raw = form.get(name)
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        return default
    return int(text) if text.isdigit() and low <= int(text) <= high else None


@router.post("/admin/logg/stickprov", response_class=HTMLResponse, include_in_schema=False)
async def log_sample(request: Request, user: User = Depends(admin_user), at: datetime = Depends(now)) -> Response:
    form = await request.form()
    _check_form_csrf(request, form.get(CSRF_FIELD))
    days = _int_field(form, "days", 30, 1, 3660)
    size = _int_field(form, "size", 20, 1, 500)
    if days is None or size is None:
        summary = ([{"href": "#days", "text": "Period: ange 1–3660 dagar."}] if days is None else []) + \
                  ([{"href": "#size", "text": "Antal: ange 1–500."}] if size is None else [])
        return render(request, user, "log.html.j2", {"title": "Fel: Loggutdrag och stickprov", "pnr_error": None,
                                               "extract": None, "check": None, "days": days or 30,
                                               "size": size or 20, "summary": summary}, 422)
    db = adapters(request).db
    check = await run_in_threadpool(lambda: audit_extract.sample_check(db, user.hsa_id, at, days=days, size=size))
    return render(request, user, "log.html.j2", {"title": "Stickprovskontroll", "pnr_error": None, "extract": None,
                                           "check": check, "days": days, "size": size})


def _head_units(ad: Adapters, user: User) -> list[str]:
    with ad.db.session() as s:
        units = list(s.scalars(select(CareUnit.hsa_id).where(CareUnit.head_hsa_id == user.hsa_id)))
    if user.unit_hsa_id and user.unit_hsa_id not in units:
        units.append(user.unit_hsa_id)
    return units


@router.get("/omprovningar", response_class=HTMLResponse, include_in_schema=False)
def head_reviews_page(request: Request, klar: str = "", utfall: str = "", user: User = Depends(head_user),
                      at: datetime = Depends(now)) -> Response:
    ad = adapters(request)
    rows = review_rows(ad, at, units=_head_units(ad, user))
    notice = None
    # Shown back on the page: only what is shaped like a reference (a pasted personal number never is).
    if utfall in OUTCOME_LABELS and REFERENCE.fullmatch(klar):
        notice = f"Omprövningen av {klar} är registrerad: {OUTCOME_LABELS[utfall].lower()}."
    return render(request, user, "head_reviews.html.j2", {"title": "Omprövning", "rows": rows, "notice": notice,
                                                    "row_error": {}})


@router.post("/omprovningar/{reference}", response_class=HTMLResponse, include_in_schema=False)
async def head_review_post(request: Request, reference: str, user: User = Depends(head_user),
                           at: datetime = Depends(now)) -> Response:
    form = await request.form()
    _check_form_csrf(request, form.get(CSRF_FIELD))
    outcome = form.get("outcome")
    ad = adapters(request)
    ref = reference.strip().upper()
    problem: dict[str, str] | None = None
    status = 422
    if not REFERENCE.fullmatch(ref):  # and never shown back: it could be a pasted personal number
        ref, status, problem = "", 404, {"code": "not_found", "message": "Beställningen finns inte."}
    elif outcome not in OUTCOME_LABELS:
        problem = {"code": "required", "message": "Välj om begränsningen ska behållas eller hävas."}
    else:
        try:
            result = await _record(ad, ref, user, str(outcome), at)
            return RedirectResponse(f"/omprovningar?klar={result['reference']}&utfall={outcome}", status_code=303)
        except _ReviewError as exc:
            status, problem = exc.status, exc.errors[0]
            ref = "" if status == 404 else ref  # shown back only when it is an order's reference
    rows = review_rows(ad, at, units=_head_units(ad, user))
    summary = {"href": f"#review-{ref}", "text": f"{ref}: {problem['message']}"} if ref else \
        {"href": "#main", "text": problem["message"]}
    return render(request, user, "head_reviews.html.j2", {
        "title": "Fel: Omprövning", "rows": rows, "row_error": {ref: problem["message"]} if ref else {},
        "summary": [summary]}, status)
