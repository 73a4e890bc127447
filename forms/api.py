"""The JSON API of `/work/shared/api-contract.md`: orders, their human steps and their paper forms.

Routes only: what they do is forms/actions.py (shared with the pages) and, below it, `flows.commands`.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from forms.actions import (
    CancelResponse,
    DecisionResponse,
    cancel_order,
    decide,
    read_order_row,
    read_order_view,
    submit_raw,
)
from forms.auth import ROLE_LABELS_SV, User, check_api_csrf, require_roles, require_user
from forms.deps import adapters, now
from forms.errors import ApiError, json_body, problems
from forms.responses import responses
from models.regions import RegionSettings
from models.routine import ORDER_TYPES, STAGES, StageDef
from models.schemas import CancelRequest, ErrorResponse, OrderView, SubmitResponse, ValidationResponse
from tasks.adapters import Adapters
from tasks.adapters.paper import paper_order, paper_region, render_pdf
from tasks.steps import orders

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,120}$")  # printable ASCII, fits the column with the user prefix
IDEMPOTENCY_HELP = ("Valfri nyckel (1–120 synliga ASCII-tecken, per person): samma nyckel och samma kropp ger "
                    "det första svaret (200) och skapar inget nytt; samma nyckel med en annan kropp ger 409.")
ERRORS = responses(401, 403, 503)  # every operation; forms/responses.py adds what holds for all of them
ORDER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/OrderRequest"}}}}}

router = APIRouter(prefix="/api", tags=["orders"], responses=ERRORS)


# --- submit and validate ------------------------------------------------------------------------------

@router.post("/orders", status_code=201, response_model=SubmitResponse, openapi_extra=ORDER_BODY,
             summary="Skicka en beställning",
             responses={200: {"model": SubmitResponse, "description": "Samma Idempotency-Key och kropp: första svaret"},
                        409: {"model": ErrorResponse, "description": "Samma Idempotency-Key med annan kropp"},
                        **responses(400, 413, 415),
                        422: {"model": ErrorResponse, "description": "Alla fel på en gång"}})
async def submit_order(request: Request, user: User = Depends(require_user),
                       key: str | None = Header(None, alias="Idempotency-Key", description=IDEMPOTENCY_HELP,
                                                examples=["3f6c2a9e-form-1"]),
                       at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> Any:
    check_api_csrf(request, user)
    require_roles(user, "clinician")
    raw = await json_body(request)
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_value", "Idempotency-Key ska vara 1–120 synliga ASCII-tecken.",
                       field="Idempotency-Key")
    result = await submit_raw(ad, raw, user, key, at)
    return JSONResponse(result.body, status_code=result.status)


@router.post("/orders/validate", response_model=ValidationResponse, openapi_extra=ORDER_BODY,
             summary="Kontrollera en beställning utan att skicka den",
             responses={**responses(400, 413, 415),
                        422: {"model": ValidationResponse, "description": "Alla fel på en gång (och varningarna)"}})
async def validate_order(request: Request, user: User = Depends(require_user), at: datetime = Depends(now),
                         ad: Adapters = Depends(adapters)) -> Any:
    check_api_csrf(request, user)
    require_roles(user, "clinician")
    try:
        raw = await json_body(request)
    except ApiError as exc:  # the answer has the declared shape here too: errors and (no) warnings
        exc.extra.setdefault("warnings", [])
        raise
    result = await run_in_threadpool(lambda: orders.check(ad, raw, at, user.hsa_id, intake=True))
    body = {"errors": problems(result.errors), "warnings": problems(result.warnings)}
    return JSONResponse(body, status_code=200 if result.ok else 422)


# --- read ---------------------------------------------------------------------------------------------

@router.api_route("/orders/validate", methods=["GET", "HEAD"], include_in_schema=False)
async def validate_is_a_post() -> Response:
    # Without this, GET /api/orders/validate would read an order called "validate" (404): say 405 instead.
    raise HTTPException(405, "Metoden är inte tillåten.", headers={"Allow": "POST"})


@router.get("/orders/{reference}", response_model=OrderView, summary="Läs en beställning (maskerat personnummer)",
            responses=responses(404, 422))
def read_order(reference: str, user: User = Depends(require_user), ad: Adapters = Depends(adapters)) -> OrderView:
    return read_order_view(ad, user, reference, "api")


# --- human steps --------------------------------------------------------------------------------------

STEP_RESPONSES = responses(404, 409, 422, 400, 413, 415)


def _decision_route(sd: StageDef) -> None:
    """`POST /api/orders/{reference}/<stage>`: the body is the stage's decision model (models/routine.py)."""
    async def record(reference: str, body: BaseModel, request: Request, user: User = Depends(require_user),
                     at: datetime = Depends(now), ad: Adapters = Depends(adapters)) -> DecisionResponse:
        check_api_csrf(request, user)
        return await decide(ad, reference, sd.api_slug, body.model_dump(), user, at)

    record.__annotations__["body"] = sd.decision  # FastAPI validates the body against the stage's own model
    record.__name__ = sd.api_slug
    roles = " eller ".join(ROLE_LABELS_SV[r].lower() for r in sd.roles)
    router.add_api_route(f"/orders/{{reference}}/{sd.api_slug}", record, methods=["POST"], status_code=202,
                         response_model=DecisionResponse, responses=STEP_RESPONSES, summary=f"{sd.title_sv} ({roles})")


for _stage in STAGES.values():
    _decision_route(_stage)


@router.post("/orders/{reference}/cancel", response_model=CancelResponse, responses=STEP_RESPONSES,
             summary="Återkalla före verkställande (beställaren eller admin)")
async def cancel(reference: str, body: CancelRequest, request: Request, user: User = Depends(require_user),
                 ad: Adapters = Depends(adapters)) -> CancelResponse:
    check_api_csrf(request, user)
    return await cancel_order(ad, reference, body.reason, user)


# --- paper forms --------------------------------------------------------------------------------------

PDF: dict[int | str, dict[str, Any]] = {200: {"content": {"application/pdf": {}}, "description": "PDF (A4, PDF/UA-1)"},
                                        404: {"model": ErrorResponse}}


def pdf_response(data: bytes, filename: str) -> Response:
    return Response(data, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "no-store"})


def _order_pdf(ad: Adapters, user: User, reference: str) -> tuple[bytes, str]:
    order = read_order_row(ad, user, reference, "paper_pdf")
    with ad.db.session() as s:
        filled = paper_order(s, orders.get(s, order.reference))
    return render_pdf(order.order_type, paper_region(ad.region(order.region), demo=ad.settings.demo), filled), order.reference


@router.get("/orders/{reference}/paper.pdf", response_class=Response, responses=PDF,
            summary="Beställningens pappersblankett, ifylld")
async def order_paper(reference: str, user: User = Depends(require_user), ad: Adapters = Depends(adapters)) -> Response:
    # Works without the engine: only the orders database and WeasyPrint are involved.
    data, ref = await run_in_threadpool(_order_pdf, ad, user, reference)
    return pdf_response(data, f"{ref}.pdf")


@lru_cache(maxsize=64)
def _blank_pdf(order_type: str, region_json: str, demo: bool) -> bytes:
    # Keyed by the region's settings as they are (a blank form changes only when they do).
    return render_pdf(order_type, paper_region(RegionSettings.model_validate_json(region_json), demo=demo), None)


@router.get("/paper-forms/{order_type}.pdf", response_class=Response,
            responses={**PDF, 422: {"model": ErrorResponse}}, summary="Tom pappersblankett (reservrutin)")
async def blank_paper(order_type: str, region: str | None = Query(default=None, examples=["kalmar"]),
                      user: User = Depends(require_user), ad: Adapters = Depends(adapters)) -> Response:
    if order_type not in ORDER_TYPES:
        raise ApiError(404, "not_found", "Okänd beställningstyp.")
    code = region or user.region
    if not code:
        raise ApiError(422, "required", "Ange region (?region=kalmar).", field="region")
    if code not in ad.regions:
        raise ApiError(422, "invalid_value", f"Okänd region. Tillåtna värden: {', '.join(ad.regions)}.",
                       field="region")
    data = await run_in_threadpool(_blank_pdf, order_type, ad.region(code).model_dump_json(), ad.settings.demo)
    return pdf_response(data, f"{order_type}-{code}.pdf")
