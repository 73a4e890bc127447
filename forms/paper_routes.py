"""HTTP endpoints of the paper routine (reservrutin), for the support centre.

- `POST /api/paper-orders` (support): register a received, signed paper order. 201 with reference and
  status; 422 with every field error at once, in the contract's shape; 409 when the referenced order is
  not waiting on paper (it already continued digitally, or ended).
- `POST /api/orders/{reference}/resume-digital` (support, admin): the execution system is back; the order
  in `paper_fallback` continues digitally from the stage it was at.

Identity: the SSO proxy's `X-Remote-User` header, trusted only from the configured proxy addresses (as
the rest of the app), and roles from the staff directory. The app's exception handlers turn
`NotAuthenticated`/`NotAllowed`/`ApiError` into the contract's 401/403/4xx JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flows.fallback import resume_digital
from forms.api import ApiError, _json_body
from forms.auth import USER_HEADER, NotAllowed, NotAuthenticated, trusted_peer
from models.reference import REFERENCE
from models.schemas import ErrorResponse, Problem
from models.tables import Staff
from tasks import directory, orders
from tasks.database import session
from tasks.paper_orders import PaperInvalid, register_paper_order


class Caller(BaseModel):
    hsa_id: str
    roles: list[str]
    region: str | None


class PaperOrderResponse(BaseModel):
    reference: str
    status: str
    channel: str
    continued: bool = False
    warnings: list[Problem] = []


class ResumeResponse(BaseModel):
    reference: str
    status: str


def caller(request: Request) -> Caller:
    """Who is asking: `X-Remote-User` from a trusted proxy, looked up in the staff directory. 401 without."""
    hsa_id = request.headers.get(USER_HEADER, "").strip()
    if not hsa_id or not trusted_peer(request):
        raise NotAuthenticated()
    with session() as s:
        person: Staff | None = directory.staff(s, hsa_id)
        if person is None:
            raise NotAuthenticated()
        return Caller(hsa_id=person.hsa_id, roles=list(person.roles), region=person.region)




def _reference(reference: str) -> str:
    if not REFERENCE.fullmatch(reference.strip()):
        raise ApiError(404, "not_found", "Beställningen finns inte.")
    return reference.strip().upper()


def _require(user: Caller, *roles: str) -> None:
    if not any(r in user.roles for r in roles):
        raise NotAllowed("Du har inte behörighet till detta.", "wrong_role")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Ingen identitet"},
    403: {"model": ErrorResponse, "description": "Fel roll eller annan region"},
    404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
}
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
async def register(request: Request, user: Caller = Depends(caller)) -> Any:
    _require(user, "support")
    raw = await _json_body(request)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not (0 < len(key) <= 120 and key.isascii() and key.isprintable() and " " not in key):
        raise ApiError(422, "invalid_value", "Idempotency-Key ska vara 1–120 synliga ASCII-tecken.",
                       field="Idempotency-Key")
    try:
        out = await register_paper_order(raw, user.hsa_id, idempotency_key=key)
    except PaperInvalid as exc:
        return JSONResponse({"errors": [e.model_dump() for e in exc.errors]}, status_code=422)
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen väntar inte på en pappersblankett (den har fortsatt "
                                            "digitalt eller är avslutad), eller Idempotency-Key har använts "
                                            "med en annan kropp.") from None
    with session() as s:
        channel = orders.get(s, out.reference).channel
    body = PaperOrderResponse(reference=out.reference, status=out.status, channel=channel,
                              continued=out.kind == "continued", warnings=out.warnings)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if out.kind == "replayed" else 201)


@router.post("/orders/{reference}/resume-digital", response_model=ResumeResponse,
             summary="Återuppta digitalt efter reservrutin (support eller admin)")
async def resume(reference: str, user: Caller = Depends(caller)) -> ResumeResponse:
    _require(user, "support", "admin")
    ref = _reference(reference)
    try:
        order = await resume_digital(ref, user.hsa_id)
    except orders.NotFound:
        raise ApiError(404, "not_found", "Beställningen finns inte.") from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen ligger inte i reservrutinen (paper_fallback).") from None
    return ResumeResponse(reference=order.reference, status=order.status)


__all__ = ["router", "caller"]
