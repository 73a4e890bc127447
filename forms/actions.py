"""What people do through the app, shared by the JSON API (forms/api.py) and the pages (forms/pages/):
read an order, submit one, decide a stage, cancel. Each turns the service layer's outcomes and exceptions
into the contract's answers (ApiError, NotAllowed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from flows import commands, urgent
from forms.auth import NotAllowed, User, may_read, require_roles
from forms.errors import NOT_FOUND, ApiError, checked_reference, problems
from models.calendar import local
from models.routine import BY_API_SLUG, STAGES
from models.rules import callback_phone_missing
from models.schemas import OrderView, Problem, SubmitResponse
from models.status import OrderStatus
from models.tables import Order
from tasks.adapters import Adapters, audit, directory
from tasks.steps import orders


class DecisionResponse(BaseModel):
    """A decision is stored as proposed and handed to the order's run, which accepts it after its own check."""
    reference: str
    stage: str
    status: str
    decision: str = "proposed"


class CancelResponse(BaseModel):
    reference: str
    status: str


class Unprocessable(ApiError):
    """422 with every problem at once (ApiError carries one)."""

    def __init__(self, items: list[Problem]) -> None:
        super().__init__(422, items[0].code, " ".join(p.message for p in items), items[0].field)
        self.items = items

    def response(self) -> JSONResponse:
        return JSONResponse({"errors": problems(self.items)}, status_code=422)


# Who sees what of an order beyond its status (issue 13): the orderer's callback number goes to those who
# call back, the orderer and admins; the stages with their outcomes (the assessment's rationale too) to
# those who act on orders, the orderer and admins.
CALLBACK_PHONE_ROLES = ("on_call", "support", "admin")
STAGE_READER_ROLES = ("admin", *dict.fromkeys(r for sd in STAGES.values() for r in sd.roles))


def sees_callback_phone(user: User, order_submitted_by: str) -> bool:
    return user.hsa_id == order_submitted_by or user.has(*CALLBACK_PHONE_ROLES)


def sees_stages(user: User, order_submitted_by: str) -> bool:
    return user.hsa_id == order_submitted_by or user.has(*STAGE_READER_ROLES)


def _local(at: datetime | None) -> datetime | None:
    # The database answers in UTC; people and the contract's examples use Swedish time (+01:00/+02:00).
    return local(at) if at is not None else None


# --- read -----------------------------------------------------------------------------------------------

def read_order_row(ad: Adapters, user: User, reference: str, via: str) -> Order:
    """Load an order the user may read and log the read (personal data was looked at)."""
    ref = checked_reference(reference)
    with ad.db.session() as s:
        try:
            order = orders.get(s, ref)
        except orders.NotFound:
            raise ApiError(404, "not_found", NOT_FOUND) from None
        unit = directory.unit(s, order.care_unit_hsa_id)
        if not may_read(user, order, unit.head_hsa_id if unit else None):
            audit.record(s, actor=user.hsa_id, action="order_read_refused", order=order, detail={"via": via},
                         at=ad.now())
            s.commit()
            raise NotAllowed("Du har inte behörighet att läsa denna beställning.", "wrong_role", audited=True)
        audit.record(s, actor=user.hsa_id, action="order_read", order=order, detail={"via": via}, at=ad.now())
        s.expunge(order)
        return order


def read_order_view(ad: Adapters, user: User, reference: str, via: str) -> OrderView:
    row = read_order_row(ad, user, reference, via)
    with ad.db.session() as s:
        v = orders.view(s, orders.get(s, row.reference))
    stages = [st.model_copy(update={"decided_at": _local(st.decided_at)}) for st in v.stages or []]
    return v.model_copy(update={
        "created_at": local(v.created_at), "due_at": _local(v.due_at), "callback_due_at": _local(v.callback_due_at),
        "history": [h.model_copy(update={"at": local(h.at)}) for h in v.history],
        "callback_phone": v.callback_phone if sees_callback_phone(user, row.submitted_by) else None,
        "stages": stages if sees_stages(user, row.submitted_by) else None})


# --- submit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Submitted:
    status: int                 # 201 created, 200 replayed, 422 invalid
    body: dict[str, Any]        # the contract's answer
    errors: list[Problem]
    warnings: list[Problem]


def _answer(order: Order, warnings: list[Problem], status: str) -> dict[str, Any]:
    return SubmitResponse(reference=order.reference, status=status, urgent=order.urgent, due_at=_local(order.due_at),
                          callback_due_at=_local(order.callback_due_at), warnings=warnings).model_dump(mode="json")


async def submit_raw(ad: Adapters, raw: Any, user: User, key: str | None, at: datetime | None = None) -> Submitted:
    """Shared by the API and the HTML form. Keys are scoped per person, so one person's key can never
    replay another person's order. The engine is told with one short try (the order is stored first, and
    the reconciler starts any run that could not be started now)."""
    scoped = f"{user.hsa_id}:{key}" if key else None
    if callback_phone_missing(raw) and (scoped is None or await run_in_threadpool(
            orders.by_idempotency_key, ad, scoped) is None):
        # Digital intake needs the orderer's number for an urgent order; the service layer does not (paper
        # orders, stored orders checked again). Every problem of the body at once, nothing stored.
        checked = await run_in_threadpool(lambda: orders.check(ad, raw, at or ad.now(), user.hsa_id, intake=True))
        return Submitted(422, {"errors": problems(checked.errors)}, checked.errors, checked.warnings)
    with ad.engine.fails_fast():
        try:
            out = await commands.submit(ad, raw, user.hsa_id, now=at, idempotency_key=scoped, wait_for_run=False)
        except IntegrityError:
            # Two identical requests raced (a double click): the other one stored the order; replay it.
            out = await commands.submit(ad, raw, user.hsa_id, now=at, idempotency_key=scoped, wait_for_run=False)
    if out.kind == "invalid":
        return Submitted(422, {"errors": problems(out.check.errors)}, out.check.errors, out.check.warnings)
    assert out.order is not None
    if out.kind == "conflict":
        raise ApiError(409, "idempotency_conflict",
                       "Idempotency-Key har redan använts för en annan beställning.", field="Idempotency-Key")
    if out.kind == "replayed":
        # The first answer again: same body, so the same warnings as when it was first checked.
        made = out.order
        first = await run_in_threadpool(lambda: orders.check(ad, raw, made.created_at, user.hsa_id,
                                                             exclude=made.reference))
        return Submitted(200, _answer(out.order, first.warnings, "submitted"), [], first.warnings)
    return Submitted(201, _answer(out.order, out.check.warnings, "submitted"), [], out.check.warnings)


# --- decide and cancel ----------------------------------------------------------------------------------

async def decide(ad: Adapters, reference: str, url_stage: str, body: dict[str, Any], user: User,
                 at: datetime | None = None) -> DecisionResponse:
    sd = BY_API_SLUG[url_stage]
    stage = sd.stage.value
    # The role check comes first, so a person who may never decide this stage learns nothing about the order.
    require_roles(user, *sd.roles, message="Du har inte behörighet att fatta detta beslut.")
    ref = checked_reference(reference)
    try:
        with ad.engine.fails_fast():
            if stage == "callback":
                # The callback clock can run on an order outside its callback stage (made urgent later, or
                # not yet received by its run): flows.urgent knows every case.
                done = await urgent.record_callback(ad, ref, user.hsa_id, str(body.get("note", "")), now=at)
                proposed = done.via == "run" or done.status == OrderStatus.SUBMITTED
                return DecisionResponse(reference=done.reference, stage=stage, status=done.status,
                                        decision="proposed" if proposed else "accepted")
            if stage == "harm_assessment" and (wrong := await run_in_threadpool(
                    orders.assessment_problems, ad, ref, body)):
                raise Unprocessable(wrong)  # the rationale and the consistency, every problem at once
            order = await commands.decide(ad, ref, stage, user.hsa_id, body, now=at)
    except orders.NotFound:
        raise ApiError(404, "not_found", NOT_FOUND) from None
    except orders.Invalid as exc:
        raise Unprocessable(exc.problems) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen väntar inte på detta steg (eller ett beslut behandlas redan).") \
            from None
    except orders.Forbidden as exc:  # the service layer logged it as `decision_refused`
        raise NotAllowed(exc.refusal.message, exc.refusal.code, audited=True) from None
    return DecisionResponse(reference=order.reference, stage=stage, status=order.status)


async def cancel_order(ad: Adapters, reference: str, reason: str, user: User) -> CancelResponse:
    ref = checked_reference(reference)
    try:
        with ad.engine.fails_fast():
            order = await commands.cancel(ad, ref, user.hsa_id, reason)
    except orders.NotFound:
        raise ApiError(404, "not_found", NOT_FOUND) from None
    except orders.Conflict:
        raise ApiError(409, "wrong_status", "Beställningen kan inte längre återkallas.") from None
    except orders.Forbidden as exc:
        raise NotAllowed(exc.refusal.message, exc.refusal.code) from None
    return CancelResponse(reference=order.reference, status=order.status)
