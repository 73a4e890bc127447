"""The urgent path in the JSON API (include with `app.include_router(urgent_routes.router)`).

- `POST /api/orders/{reference}/urgent` — on_call or support (of the order's region): make an existing order
  urgent and start the urgent path (callback deadline now + 30 minutes, page on-call at once, make sure the
  order's run is going). Repeating it changes nothing. 403 for other roles, 404 unknown, 409 ended order.
- `GET /api/orders/{reference}/callback-clock` — anyone who may read the order: the callback deadline, seconds
  left, and whether it was met or missed (for the countdown on the order page).

Identity: the header `X-Remote-User` (HSA-id) from a trusted proxy, looked up in the staff directory; the
embedded login's session cookie is accepted as everywhere else in the app (JSON posts then need the CSRF
header). The POST has no body but must say `Content-Type: application/json` (send `{}`), or a cross-site
form behind the SSO proxy could make an order urgent (forms.auth.csrf_guard). No personal data in any answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flows import urgent
from forms.auth import (
    USER_HEADER,
    NotAllowed,
    NotAuthenticated,
    User,
    check_api_csrf,
    identify,
    may_read,
    trusted_peer,
)
from forms.deps import adapters
from forms.deps import now as clock
from forms.errors import ApiError
from forms.responses import responses
from models.calendar import local
from models.schemas import ErrorResponse
from models.tables import Staff
from tasks.adapters import Adapters, audit, directory
from tasks.steps import orders, urgency

router = APIRouter(prefix="/api", tags=["urgent"])


def _user(person: Staff) -> User:
    return User(person.hsa_id, person.name, tuple(person.roles), person.unit_hsa_id, person.region, "header")


def current_staff(request: Request) -> User:
    """The member of staff making the request: the trusted proxy's `X-Remote-User`, else the session."""
    hsa = request.headers.get(USER_HEADER, "").strip()
    if hsa and trusted_peer(request):
        with adapters(request).db.session() as s:
            person = directory.staff(s, hsa)
        if person is None:
            raise NotAuthenticated()
        return _user(person)
    user = identify(request)  # the embedded login's cookie (an untrusted header is ignored there too)
    if user is None:
        raise NotAuthenticated()
    return user


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"field": "", "code": code, "message": message}]}, status_code=status)


class UrgentResponse(BaseModel):
    reference: str
    urgent: bool
    made_urgent: bool                     # false: it was urgent already
    status: str
    callback_due_at: datetime | None
    seconds_left: int | None
    paged: Literal["on_call", "support_queue"] | None
    page_delivered: bool
    run_started: bool


class CallbackClockResponse(BaseModel):
    reference: str
    urgent: bool
    state: Literal["none", "running", "met", "missed"]
    callback_due_at: datetime | None
    seconds_left: int | None
    met: bool
    missed: bool
    recorded_at: datetime | None
    escalated_at: datetime | None
    minutes_late: int | None


def _local(at: datetime | None) -> datetime | None:
    return local(at) if at is not None else None


NOT_FOUND = (404, "not_found", "Beställningen finns inte.")
RESPONSES: dict[int | str, dict[str, Any]] = {**responses(401, 403, 404, 422),
                                              409: {"model": ErrorResponse, "description": "Beställningen är avslutad"}}


async def start_urgent_for(ad: Adapters, user: User, reference: str, now: datetime) -> urgent.UrgentOutcome:
    """The urgent path as `user` asks for it, with the API's errors (the order page uses it too)."""
    if not user.has(*urgency.TRIGGER_ROLES):
        raise NotAllowed("Endast beredskap eller support kan göra en beställning brådskande.", "wrong_role")
    try:
        ref = urgency.normalise_reference(reference)
        with ad.engine.fails_fast():  # the page and the clock never wait for the engine; the reconciler catches up
            return await urgent.start_urgent(ad, ref, user.hsa_id, now, check_actor=True)
    except (ValueError, orders.NotFound):
        raise ApiError(*NOT_FOUND) from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen är avslutad och kan inte göras brådskande.") from None


@router.post("/orders/{reference}/urgent", response_model=UrgentResponse, responses=RESPONSES,
             summary="Gör en beställning brådskande och sök beredskapen (beredskap eller support)")
async def make_urgent(reference: str, request: Request, user: User = Depends(current_staff),
                      now: datetime = Depends(clock), ad: Adapters = Depends(adapters)) -> Any:
    check_api_csrf(request, user)
    out = await start_urgent_for(ad, user, reference, now)
    left = (max(0, int((out.callback_due_at - now).total_seconds())) if out.callback_due_at else None)
    return UrgentResponse(reference=out.reference, urgent=True, made_urgent=out.made_urgent, status=out.status,
                          callback_due_at=_local(out.callback_due_at), seconds_left=left,
                          paged=out.paged,  # type: ignore[arg-type]
                          page_delivered=out.page_delivered, run_started=out.flow_run_id is not None)


def _readable(ad: Adapters, user: User, ref: str) -> bool:
    """Whether `user` may see the order's callback clock.

    A permitted read is not audited as `order_read`: the clock answer carries no personal data (no number,
    name or free text, only the reference and the clock's times), and the order page that shows it has
    already logged its own read. A refused one is logged like every other refused read: someone looked for
    an order they may not read."""
    with ad.db.session() as s:
        order = orders.get(s, ref)
        unit = directory.unit(s, order.care_unit_hsa_id)
        allowed = may_read(user, order, unit.head_hsa_id if unit else None)
        if not allowed:
            audit.record(s, actor=user.hsa_id, action="order_read_refused", order=order,
                         detail={"via": "callback_clock"}, at=ad.now())
        return allowed


@router.get("/orders/{reference}/callback-clock", response_model=CallbackClockResponse, responses=RESPONSES,
            summary="Återuppringningsklockan: tidsgräns, sekunder kvar, hållen eller missad")
async def callback_clock(reference: str, user: User = Depends(current_staff), now: datetime = Depends(clock),
                         ad: Adapters = Depends(adapters)) -> Any:
    try:
        ref = urgency.normalise_reference(reference)
        if not await run_in_threadpool(_readable, ad, user, ref):
            raise NotAllowed("Du har inte behörighet att läsa denna beställning.", "wrong_role", audited=True)
        c = await run_in_threadpool(urgency.callback_clock, ad, ref, now)
    except (ValueError, orders.NotFound):
        return _error(*NOT_FOUND)
    return CallbackClockResponse(reference=c.reference, urgent=c.urgent, state=c.state,
                                 callback_due_at=_local(c.callback_due_at), seconds_left=c.seconds_left,
                                 met=c.state == "met", missed=c.state == "missed", recorded_at=_local(c.recorded_at),
                                 escalated_at=_local(c.escalated_at), minutes_late=c.minutes_late)
