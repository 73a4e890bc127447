"""The JSON API of `/work/shared/api-contract.md`. Every change goes through `flows.commands`."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from flows import commands, urgent
from forms import paper
from forms.auth import NotAllowed, User, check_api_csrf, may_read, require_roles, require_user
from forms.now import now
from models import personnummer
from models.authority import STAGE_ROLES
from models.calendar import local
from models.reference import REFERENCE
from models.regions import load_regions
from models.schemas import (
    ORDER_TYPES,
    ApprovalDecision,
    AssessmentDecision,
    CallbackRecord,
    CancelRequest,
    ErrorResponse,
    ExecutionRecord,
    OrderView,
    Problem,
    SubmitResponse,
    ValidationResponse,
)
from models.status import OrderStatus
from models.tables import Order
from tasks import audit, directory, orders
from tasks.database import session
from tasks.mail import backlog as outbox_backlog
from tasks.settings import settings

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,120}$")  # printable ASCII, fits the column with the user prefix
IDEMPOTENCY_HELP = ("Valfri nyckel (1–120 synliga ASCII-tecken, per person): samma nyckel och samma kropp ger "
                    "det första svaret (200) och skapar inget nytt; samma nyckel med en annan kropp ger 409.")
STAGES = {"assessment": "harm_assessment", "approval": "approval", "callback": "callback", "execution": "execution"}


class ApiError(Exception):
    """An answer in the contract's error shape: `{"errors": [{"field", "code", "message"}]}`."""

    def __init__(self, status: int, code: str, message: str, field: str = "",
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.extra = status, code, message, field, extra or {}

    def response(self) -> JSONResponse:
        body = {"errors": [{"field": self.field, "code": self.code, "message": self.message}], **self.extra}
        return JSONResponse(body, status_code=self.status)


class DecisionResponse(BaseModel):
    """A decision is stored as proposed and handed to the order's run, which accepts it after its own check."""
    reference: str
    stage: str
    status: str
    decision: str = "proposed"


class CancelResponse(BaseModel):
    reference: str
    status: str


class ComponentHealth(BaseModel):
    ok: bool
    detail: str = ""


class HealthResponse(BaseModel):
    status: str  # ok | degraded
    database: ComponentHealth
    prefect: ComponentHealth
    smtp: ComponentHealth
    outbox: ComponentHealth  # emails not yet accepted by the SMTP server (they are retried until they are)
    # The audit log's hash chain as last verified (`audit verify`, the hourly `audit-verify` flow): not ok
    # when that verification found the chain broken.
    audit: ComponentHealth


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Ingen identitet"},
    403: {"model": ErrorResponse, "description": "Fel roll, egen beställning eller CSRF"},
}
ORDER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/OrderRequest"}}}}}

router = APIRouter(prefix="/api", tags=["orders"], responses=ERRORS)
health_router = APIRouter(tags=["health"])


# --- helpers ------------------------------------------------------------------------------------------

def prefect_fails_fast() -> AbstractContextManager[Any]:
    """For calls a person waits on. Prefect's client retries a busy server (503) with backoff for up to a
    minute; here one short try is enough, because the orders database is written first and the housekeeping
    reconciler starts or resumes any run that could not be reached (tasks/launch.py)."""
    from tasks.launch import prefect_fails_fast as fails_fast
    return fails_fast(10.0)


async def _json_body(request: Request) -> Any:
    """The raw JSON body; the rule engine checks it field by field (every problem at once)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Skicka JSON (Content-Type: application/json).")
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise ApiError(422, "invalid_value", "Ogiltig JSON.") from None


def _problems(items: list[Problem]) -> list[dict[str, str]]:
    return [p.model_dump() for p in items]


def checked_reference(reference: str) -> str:
    """The path's reference, normalised; 404 before any database read for anything else (a path can hold a
    personal number, or a NUL that PostgreSQL refuses)."""
    if not REFERENCE.fullmatch(reference.strip()):
        raise ApiError(404, "not_found", "Beställningen finns inte.")
    return reference.strip().upper()


def _local(at: datetime | None) -> datetime | None:
    # The database answers in UTC; people and the contract's examples use Swedish time (+01:00/+02:00).
    return local(at) if at is not None else None


def _submit_answer(order: Order, warnings: list[Problem], status: str) -> dict[str, Any]:
    return SubmitResponse(reference=order.reference, status=status, urgent=order.urgent, due_at=_local(order.due_at),
                          callback_due_at=_local(order.callback_due_at), warnings=warnings).model_dump(mode="json")


def read_order_row(user: User, reference: str, via: str) -> Order:
    """Load an order the user may read and log the read (personal data was looked at)."""
    ref = checked_reference(reference)
    with session() as s:
        try:
            order = orders.get(s, ref)
        except orders.NotFound:
            raise ApiError(404, "not_found", "Beställningen finns inte.") from None
        unit = directory.unit(s, order.care_unit_hsa_id)
        if not may_read(user, order, unit.head_hsa_id if unit else None):
            audit.record(s, actor=user.hsa_id, action="order_read_refused", order=order, detail={"via": via})
            s.commit()
            raise NotAllowed("Du har inte behörighet att läsa denna beställning.", "wrong_role")
        audit.record(s, actor=user.hsa_id, action="order_read", order=order, detail={"via": via})
        s.expunge(order)
        return order


def read_order_view(user: User, reference: str, via: str) -> OrderView:
    ref = read_order_row(user, reference, via).reference
    with session() as s:
        v = orders.view(s, orders.get(s, ref))
    return v.model_copy(update={
        "created_at": local(v.created_at), "due_at": _local(v.due_at), "callback_due_at": _local(v.callback_due_at),
        "history": [h.model_copy(update={"at": local(h.at)}) for h in v.history]})


# --- submit and validate ------------------------------------------------------------------------------

@router.post("/orders", status_code=201, response_model=SubmitResponse, openapi_extra=ORDER_BODY,
             summary="Skicka en beställning",
             responses={200: {"model": SubmitResponse, "description": "Samma Idempotency-Key och kropp: första svaret"},
                        409: {"model": ErrorResponse, "description": "Samma Idempotency-Key med annan kropp"},
                        413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                        422: {"model": ErrorResponse, "description": "Alla fel på en gång"}})
async def submit_order(request: Request, user: User = Depends(require_user),
                       key: str | None = Header(None, alias="Idempotency-Key", description=IDEMPOTENCY_HELP,
                                                examples=["3f6c2a9e-form-1"]),
                       at: datetime = Depends(now)) -> Any:
    check_api_csrf(request, user)
    require_roles(user, "clinician")
    raw = await _json_body(request)
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_value", "Idempotency-Key ska vara 1–120 synliga ASCII-tecken.",
                       field="Idempotency-Key")
    result = await submit_raw(raw, user, key, at)
    return JSONResponse(result.body, status_code=result.status)


@dataclass(frozen=True)
class Submitted:
    status: int                 # 201 created, 200 replayed, 422 invalid
    body: dict[str, Any]        # the contract's answer
    errors: list[Problem]
    warnings: list[Problem]


async def submit_raw(raw: Any, user: User, key: str | None, at: datetime | None = None) -> Submitted:
    """Shared by the API and the HTML form. Keys are scoped per person, so one person's key can never
    replay another person's order."""
    scoped = f"{user.hsa_id}:{key}" if key else None
    with prefect_fails_fast():
        try:
            out = await commands.submit(raw, user.hsa_id, now=at, idempotency_key=scoped, wait_for_run=False)
        except IntegrityError:
            # Two identical requests raced (a double click): the other one stored the order; replay it.
            out = await commands.submit(raw, user.hsa_id, now=at, idempotency_key=scoped, wait_for_run=False)
    if out.kind == "invalid":
        return Submitted(422, {"errors": _problems(out.check.errors)}, out.check.errors, out.check.warnings)
    assert out.order is not None
    if out.kind == "conflict":
        raise ApiError(409, "idempotency_conflict",
                       "Idempotency-Key har redan använts för en annan beställning.", field="Idempotency-Key")
    if out.kind == "replayed":
        # The first answer again: same body, so the same warnings as when it was first checked.
        first = await run_in_threadpool(orders.check, raw, out.order.created_at, user.hsa_id)
        return Submitted(200, _submit_answer(out.order, first.warnings, "submitted"), [], first.warnings)
    return Submitted(201, _submit_answer(out.order, out.check.warnings, "submitted"), [], out.check.warnings)


@router.post("/orders/validate", response_model=ValidationResponse, openapi_extra=ORDER_BODY,
             summary="Kontrollera en beställning utan att skicka den",
             responses={422: {"model": ValidationResponse}, 413: {"model": ErrorResponse},
                        415: {"model": ErrorResponse}})
async def validate_order(request: Request, user: User = Depends(require_user), at: datetime = Depends(now)) -> Any:
    check_api_csrf(request, user)
    require_roles(user, "clinician")
    raw = await _json_body(request)
    result = await run_in_threadpool(orders.check, raw, at, user.hsa_id)
    body = {"errors": _problems(result.errors), "warnings": _problems(result.warnings)}
    return JSONResponse(body, status_code=200 if result.ok else 422)


# --- read ---------------------------------------------------------------------------------------------

@router.get("/orders/{reference}", response_model=OrderView, summary="Läs en beställning (maskerat personnummer)",
            responses={404: {"model": ErrorResponse}})
def read_order(reference: str, user: User = Depends(require_user)) -> OrderView:
    return read_order_view(user, reference, "api")


# --- human steps --------------------------------------------------------------------------------------

async def decide(reference: str, url_stage: str, body: dict[str, Any], user: User,
                 at: datetime | None = None) -> DecisionResponse:
    stage = STAGES[url_stage]
    roles = STAGE_ROLES[stage]
    # The role check comes first, so a person who may never decide this stage learns nothing about the order.
    require_roles(user, *roles, message="Du har inte behörighet att fatta detta beslut.")
    ref = checked_reference(reference)
    try:
        with prefect_fails_fast():
            if stage == "callback":
                # The callback clock can run on an order outside its callback stage (made urgent later, or
                # not yet received by its run): flows.urgent knows every case.
                done = await urgent.record_callback(ref, user.hsa_id, str(body.get("note", "")), now=at)
                proposed = done.via == "run" or done.status == OrderStatus.SUBMITTED
                return DecisionResponse(reference=done.reference, stage=stage, status=done.status,
                                        decision="proposed" if proposed else "accepted")
            order = await commands.decide(ref, stage, user.hsa_id, body, now=at)
    except orders.NotFound:
        raise ApiError(404, "not_found", "Beställningen finns inte.") from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen väntar inte på detta steg (eller ett beslut behandlas redan).") \
            from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    return DecisionResponse(reference=order.reference, stage=stage, status=order.status)


STEP_RESPONSES: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                                                   422: {"model": ErrorResponse}}


@router.post("/orders/{reference}/assessment", status_code=202, response_model=DecisionResponse,
             responses=STEP_RESPONSES, summary="Menprövning (assessor)")
async def assessment(reference: str, body: AssessmentDecision, request: Request,
                     user: User = Depends(require_user), at: datetime = Depends(now)) -> DecisionResponse:
    check_api_csrf(request, user)
    return await decide(reference, "assessment", body.model_dump(), user, at)


@router.post("/orders/{reference}/approval", status_code=202, response_model=DecisionResponse,
             responses=STEP_RESPONSES, summary="Godkännande (verksamhetschef eller bakjour)")
async def approval(reference: str, body: ApprovalDecision, request: Request,
                   user: User = Depends(require_user), at: datetime = Depends(now)) -> DecisionResponse:
    check_api_csrf(request, user)
    return await decide(reference, "approval", body.model_dump(), user, at)


@router.post("/orders/{reference}/callback", status_code=202, response_model=DecisionResponse,
             responses=STEP_RESPONSES, summary="Återuppringning (beredskap eller support)")
async def callback(reference: str, body: CallbackRecord, request: Request,
                   user: User = Depends(require_user), at: datetime = Depends(now)) -> DecisionResponse:
    check_api_csrf(request, user)
    return await decide(reference, "callback", body.model_dump(), user, at)


@router.post("/orders/{reference}/execution", status_code=202, response_model=DecisionResponse,
             responses=STEP_RESPONSES, summary="Manuellt verkställande (kontoadministratör)")
async def execution(reference: str, body: ExecutionRecord, request: Request,
                    user: User = Depends(require_user), at: datetime = Depends(now)) -> DecisionResponse:
    check_api_csrf(request, user)
    return await decide(reference, "execution", body.model_dump(), user, at)


async def cancel_order(reference: str, reason: str, user: User) -> CancelResponse:
    ref = checked_reference(reference)
    try:
        with prefect_fails_fast():
            order = await commands.cancel(ref, user.hsa_id, reason)
    except orders.NotFound:
        raise ApiError(404, "not_found", "Beställningen finns inte.") from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen kan inte längre återkallas.") from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    return CancelResponse(reference=order.reference, status=order.status)


@router.post("/orders/{reference}/cancel", response_model=CancelResponse, responses=STEP_RESPONSES,
             summary="Återkalla före verkställande (beställaren eller admin)")
async def cancel(reference: str, body: CancelRequest, request: Request,
                 user: User = Depends(require_user)) -> CancelResponse:
    check_api_csrf(request, user)
    return await cancel_order(reference, body.reason, user)


# --- paper forms --------------------------------------------------------------------------------------

PDF: dict[int | str, dict[str, Any]] = {200: {"content": {"application/pdf": {}}, "description": "PDF (A4, PDF/UA-1)"}, 404: {"model": ErrorResponse}}


def paper_region(code: str) -> paper.PaperRegion:
    r = load_regions()[code]
    return paper.PaperRegion(code=r.code, name=r.name, support_phone=r.support_phone,
                             support_option=r.support_option, postal_route=list(r.postal_route),
                             on_call_window=f"{r.hours.on_call_start:%H:%M}–{r.hours.on_call_end:%H:%M}",
                             callback_minutes=r.callback_minutes)


def paper_order(order: Order) -> paper.PaperOrder:
    with session() as s:
        unit = directory.unit(s, order.care_unit_hsa_id)
        orderer = directory.staff(s, order.submitted_by)
    approval = (order.stage_plan or {}).get("approval") or {}
    return paper.PaperOrder(
        reference=order.reference, order_type=order.order_type, initiative=order.initiative,
        actions=list(order.actions or []),
        patient_personal_number=personnummer.PersonalNumber(order.patient_pnr).formatted(), patient_name=None,
        patient_protected_identity=order.patient_protected,
        guardian_personal_number=personnummer.PersonalNumber(order.guardian_pnr).formatted()
        if order.guardian_pnr else None,
        minor_access_grant=order.minor_grant, minor_access_recipient=order.minor_recipient,
        child_consent=order.child_consent if order.minor_recipient else None,
        identity_checked_in_person=order.identity_checked, urgent=order.urgent, reason=order.reason or "",
        care_unit_hsa_id=order.care_unit_hsa_id, care_unit_name=unit.name if unit else None,
        orderer_name=orderer.name if orderer else None, orderer_hsa_id=order.submitted_by,
        created_at=f"{local(order.created_at):%Y-%m-%d %H:%M}",
        # Before the run has planned the stages, assume approval is needed: a signature line too many is harmless.
        needs_head_signature=bool(approval.get("required", True)),
    )


def _pdf(data: bytes, filename: str) -> Response:
    return Response(data, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "no-store"})


@router.get("/orders/{reference}/paper.pdf", response_class=Response, responses=PDF,
            summary="Beställningens pappersblankett, ifylld")
async def order_paper(reference: str, user: User = Depends(require_user)) -> Response:
    # Works without Prefect: only the orders database and WeasyPrint are involved.
    order = await run_in_threadpool(read_order_row, user, reference, "paper_pdf")
    data = await run_in_threadpool(lambda: paper.render_pdf(order.order_type, paper_region(order.region),
                                                            paper_order(order)))
    return _pdf(data, f"{order.reference}.pdf")


@lru_cache(maxsize=64)
def _blank_pdf(order_type: str, region: str) -> bytes:
    return paper.render_pdf(order_type, paper_region(region), None)


@router.get("/paper-forms/{order_type}.pdf", response_class=Response,
            responses={**PDF, 422: {"model": ErrorResponse}}, summary="Tom pappersblankett (reservrutin)")
async def blank_paper(order_type: str, region: str | None = Query(default=None, examples=["kalmar"]),
                      user: User = Depends(require_user)) -> Response:
    if order_type not in ORDER_TYPES:
        raise ApiError(404, "not_found", "Okänd beställningstyp.")
    code = region or user.region
    if not code:
        raise ApiError(422, "required", "Ange region (?region=kalmar).", field="region")
    if code not in load_regions():
        raise ApiError(422, "invalid_value", f"Okänd region. Tillåtna värden: {', '.join(load_regions())}.",
                       field="region")
    data = await run_in_threadpool(_blank_pdf, order_type, code)
    return _pdf(data, f"{order_type}-{code}.pdf")


# --- health -------------------------------------------------------------------------------------------

def _database() -> ComponentHealth:
    try:
        with session() as s:
            s.execute(text("SELECT 1"))
        return ComponentHealth(ok=True)
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)


async def _prefect() -> ComponentHealth:
    from prefect.settings import get_current_settings

    from tasks.prefect_auth import basic_auth_header
    api = get_current_settings().api
    url = api.url
    if not url:
        return ComponentHealth(ok=False, detail="PREFECT_API_URL saknas")
    # /health answers without authentication; /admin/version needs the auth string, so a wrong or missing
    # PREFECT_API_AUTH_STRING shows here (HTTP 401) and not first when an order's run cannot start.
    secret = api.auth_string.get_secret_value() if api.auth_string else ""
    try:
        async with httpx.AsyncClient(timeout=2.0, headers=basic_auth_header(secret) if secret else {}) as client:
            r = await client.get(f"{url.rstrip('/')}/admin/version")
        if r.status_code == 401:
            return ComponentHealth(ok=False, detail="HTTP 401: PREFECT_API_AUTH_STRING saknas eller är fel")
        return ComponentHealth(ok=r.status_code == 200, detail=f"HTTP {r.status_code}")
    except httpx.HTTPError as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)


async def _smtp() -> ComponentHealth:
    cfg = settings()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(cfg.smtp_host, cfg.smtp_port), 2.0)
        banner = await asyncio.wait_for(reader.readline(), 2.0)
        writer.write(b"QUIT\r\n")
        writer.close()
        return ComponentHealth(ok=banner.startswith(b"220"), detail=banner[:3].decode(errors="replace"))
    except (OSError, TimeoutError) as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)


def _outbox() -> ComponentHealth:
    try:
        waiting, oldest = outbox_backlog()
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)
    if not waiting:
        return ComponentHealth(ok=True, detail="0 väntar")
    return ComponentHealth(ok=oldest < settings().outbox_alarm_minutes,
                           detail=f"{waiting} väntar, äldsta {oldest:.0f} min")


def _audit_chain() -> ComponentHealth:
    from tasks.audit_chain import latest
    try:
        v = latest()
    except Exception as exc:
        return ComponentHealth(ok=False, detail=type(exc).__name__)
    if v is None:
        return ComponentHealth(ok=True, detail="inte verifierad än")
    when = v.at.isoformat(timespec="seconds")
    if v.ok:
        return ComponentHealth(ok=True, detail=f"hel, {v.rows} rader, verifierad {when}")
    return ComponentHealth(ok=False, detail=f"BRUTEN vid rad id {v.row_id} ({v.problem}), verifierad {when}")


@health_router.get("/healthz", response_model=HealthResponse,
                   summary="Databas, Prefect API, SMTP, e-postkö och granskningsloggens kedja")
async def healthz() -> HealthResponse:
    db, pf, mail, queue, chain = await asyncio.gather(run_in_threadpool(_database), _prefect(), _smtp(),
                                                      run_in_threadpool(_outbox), run_in_threadpool(_audit_chain))
    ok = db.ok and pf.ok and mail.ok and queue.ok and chain.ok
    return HealthResponse(status="ok" if ok else "degraded", database=db, prefect=pf, smtp=mail, outbox=queue,
                          audit=chain)
