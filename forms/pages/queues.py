"""Work queues (/ko/<slug>): compact rows of the orders waiting for a stage that this person may decide,
urgent first, then by deadline, then the oldest, filtered by care unit and order type. A row opens the order
page, where the decision form is (forms/pages/orders.py); its POST comes here. Which orders, who may decide
and what the form takes all come from models/routine.py; the orders are selected in SQL by
tasks/steps/queues.py and each row is checked again with models.authority. `GET /api/queues/{stage}`
(forms/queue_api.py) lists the same rows."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.datastructures import FormData

from forms.actions import decide
from forms.auth import NotAllowed, User, require_roles, require_user
from forms.deps import adapters, now
from forms.errors import ApiError
from forms.pages.common import form_str, intro, masked, posted_form, render, summary_links
from forms.pages.orders import assessment_of, log_reads, order_page_response
from models import sla
from models.authority import refusal
from models.calendar import local
from models.reference import REFERENCE
from models.routine import BY_QUEUE_SLUG, ORDER_TYPES, Stage, StageDef
from models.rules import check_assessment
from models.tables import CareUnit, Order
from tasks.adapters import Adapters, directory
from tasks.steps import orders
from tasks.steps.queues import queue_query

router = APIRouter(include_in_schema=False)
HSA_SHAPE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,63}")
QUEUE_LIMIT = 200  # most urgent first; a longer queue is a staffing problem, not a page to scroll


@dataclass
class QueueItem:
    order: Order
    unit_name: str
    overdue: bool
    blocked: str | None
    pending: bool
    deadline: datetime | None
    seconds_left: int | None = None  # the countdown of an urgent order (the callback clock in that queue)
    assessment: dict[str, Any] | None = None  # the harm assessment, for the approver and the account admin

    def as_json(self) -> dict[str, Any]:
        """A row of `GET /api/queues/{stage}`: the page's columns, no free text, a masked patient number."""
        o = self.order
        return {"reference": o.reference, "order_type": o.order_type, "actions": list(o.actions or []),
                "care_unit_hsa_id": o.care_unit_hsa_id, "care_unit": self.unit_name, "region": o.region,
                "urgent": o.urgent, "status": o.status, "patient": masked(o.patient_pnr),
                "created_at": local(o.created_at).isoformat(),
                "deadline": local(self.deadline).isoformat() if self.deadline else None,
                "seconds_left": self.seconds_left, "overdue": self.overdue, "decision_pending": self.pending}


@dataclass(frozen=True)
class QueueFilter:
    unit: str | None = None
    order_type: str | None = None

    @classmethod
    def of(cls, unit: str = "", order_type: str = "") -> QueueFilter:
        """From the query string; 422 for a value no care unit or order type can have (an unknown but
        well-formed unit matches no order, which the page says)."""
        unit, order_type = unit.strip().upper(), order_type.strip()
        if unit and not HSA_SHAPE.fullmatch(unit):
            raise ApiError(422, "invalid_value", "Ogiltig vårdenhet.", field="unit")
        if order_type and order_type not in ORDER_TYPES:
            raise ApiError(422, "invalid_value", "Okänd beställningstyp. Tillåtna värden: "
                           + ", ".join(ORDER_TYPES) + ".", field="type")
        return cls(unit or None, order_type or None)


def _seconds_left(due: datetime | None, at: datetime) -> int | None:
    return None if due is None else max(0, math.ceil((due - at).total_seconds()))


def _item(sd: StageDef, o: Order, unit_name: str, why: str | None, at: datetime) -> QueueItem:
    deadline = o.callback_due_at if sd.stage == Stage.CALLBACK else o.due_at
    left = _seconds_left(deadline, at) if o.urgent else None
    overdue = left == 0 if sd.stage == Stage.CALLBACK else sla.is_overdue(o.due_at, o.status, at)
    pending = any(d.stage == sd.stage.value and d.state == "proposed" for d in o.decisions)
    shows_assessment = sd.stage in (Stage.APPROVAL, Stage.EXECUTION)
    return QueueItem(o, unit_name, overdue, why, pending, deadline, left,
                     assessment_of(o) if shows_assessment else None)


def queue_items(ad: Adapters, user: User, sd: StageDef, at: datetime, flt: QueueFilter = QueueFilter(),
                via: str = "queue") -> list[QueueItem]:
    """This person's orders of the stage in the contract's order (urgent, deadline, oldest), each checked
    again with models.authority. An order they may not decide only for four eyes (their own order, or the
    one they assessed) stays listed with the reason, so that the queue does not hide work from them."""
    stage = sd.stage.value
    with ad.db.session() as s:
        rows = list(s.scalars(queue_query(stage, user.hsa_id, user.roles, user.region, unit=flt.unit,
                                          order_type=flt.order_type).limit(QUEUE_LIMIT)))
        decider = orders.decider(directory.staff(s, user.hsa_id))
        items = []
        for o in rows:
            why = refusal(stage, decider, orders.facts(s, o))
            if why and why.code not in ("own_order", "same_as_assessor"):
                continue  # another unit's or region's decision: not this person's queue
            unit = directory.unit(s, o.care_unit_hsa_id)
            items.append(_item(sd, o, unit.name if unit else o.care_unit_hsa_id, why.message if why else None,
                               at))
        # The rows show each order's masked number: a read of personal data, logged per order, in the same
        # transaction as the query (one commit however long the queue).
        log_reads(s, user, [it.order for it in items], via, at)
        for it in items:
            s.expunge(it.order)
    return items


def unit_options(ad: Adapters, user: User) -> list[tuple[str, str]]:
    """The care units a queue can be filtered by: the person's region's (every region's without one)."""
    with ad.db.session() as s:
        units = s.scalars(select(CareUnit).order_by(CareUnit.name))
        return [(u.hsa_id, u.name) for u in units if user.region in (None, u.region)]


def queue_def(slug: str) -> StageDef:
    if slug not in BY_QUEUE_SLUG:
        raise ApiError(404, "not_found", "Det finns ingen sådan arbetskö.")
    return BY_QUEUE_SLUG[slug]


def _queue_page(request: Request, user: User, sd: StageDef, items: list[QueueItem], flt: QueueFilter,
                notice: str | None = None) -> Response:
    ad = adapters(request)
    q = {"stage": sd.stage.value, "title": sd.title_sv, "roles": sd.roles, "intro": intro(sd, ad, user)}
    return render(request, "queue.html.j2", {
        "user": user, "title": f"Arbetskö: {sd.title_sv}", "q": q, "slug": sd.queue_slug, "items": items,
        "notice": notice, "flt": flt, "units": unit_options(ad, user),
        "types": [(t.code, t.label_sv) for t in ORDER_TYPES.values()],
        "shows_phone": sd.stage == Stage.CALLBACK})


@router.get("/ko/{slug}", response_class=HTMLResponse)
def queue(request: Request, slug: str, klar: str = "", enhet: str = "", typ: str = "") -> Response:
    user = require_user(request)
    sd = queue_def(slug)
    require_roles(user, *sd.roles)
    notice = f"Beslutet för {klar} är registrerat." if REFERENCE.fullmatch(klar) else None
    flt = QueueFilter.of(enhet, typ)
    return _queue_page(request, user, sd, queue_items(adapters(request), user, sd, now(request), flt), flt, notice)


def parse_decision(stage: str, form: FormData, restricts: bool | None = None
                   ) -> tuple[BaseModel | None, dict[str, str], dict[str, str]]:
    """(decision, errors by field, entered values); `restricts`: the order takes access away (an assessment
    of no harm cannot then go ahead: models.rules.check_assessment)."""
    values = {k: form_str(form, k) for k in ("harm_found", "decision", "rationale", "review_after_days", "approved",
                                             "comment", "note", "system_reference")}
    errors: dict[str, str] = {}
    body, model = _decision_body(Stage(stage), values, errors, restricts)
    for k in ("rationale", "comment", "note"):
        if len(values[k]) > 2000:
            errors[k] = "Högst 2000 tecken."
    if errors:
        return None, errors, values
    try:
        return model.model_validate(body), {}, values
    except ValidationError as exc:
        return None, {str(e["loc"][0]): "Ogiltigt värde." for e in exc.errors()}, values


YES_NO = {"yes": True, "no": False}


def _decision_body(stage: Stage, values: dict[str, str], errors: dict[str, str],
                   restricts: bool | None = None) -> tuple[dict[str, Any], type[BaseModel]]:
    model = BY_STAGE[stage].decision
    if stage == Stage.HARM_ASSESSMENT:
        if values["harm_found"] not in YES_NO:
            errors["harm_found"] = "Ange om det finns risk för men."
        if values["decision"] not in ("restrict", "do_not_restrict"):
            errors["decision"] = "Välj beslut."
        days = values["review_after_days"]
        if days and not (days.isdigit() and 1 <= int(days) <= 3650):
            errors["review_after_days"] = "Ange ett antal dagar mellan 1 och 3650."
        body = {"harm_found": YES_NO.get(values["harm_found"]), "decision": values["decision"],
                "rationale": values["rationale"], "review_after_days": int(days) if days.isdigit() else None}
        for p in check_assessment(body, restricts=restricts):  # the API's rules (models/rules.py), with the other errors at once
            errors.setdefault(p.field, p.message)
        return body, model
    if stage == Stage.APPROVAL:
        if values["approved"] not in YES_NO:
            errors["approved"] = "Välj om beställningen godkänns eller avslås."
        return {"approved": YES_NO.get(values["approved"]), "comment": values["comment"]}, model
    if stage == Stage.CALLBACK:
        return {"note": values["note"]}, model
    if not values["system_reference"]:
        errors["system_reference"] = "Ange referensen från 1177 administrationsverktyg."
    return {"system_reference": values["system_reference"]}, model


BY_STAGE = {d.stage: d for d in BY_QUEUE_SLUG.values()}
FIRST_INPUT = {"harm_found": "harm_found-yes", "decision": "decision-restrict", "approved": "approved-yes"}
DECISION_LABELS = {"harm_found": "Risk för men", "decision": "Beslut", "review_after_days": "Omprövning",
                   "approved": "Beslut", "system_reference": "Referens i 1177", "rationale": "Motivering",
                   "comment": "Kommentar", "note": "Anteckning"}


@router.post("/ko/{slug}/{reference}")
async def queue_decision(request: Request, slug: str, reference: str) -> Response:
    """A decision from the order page's form. Done: back to the queue, the next order at the top. Refused or
    wrong: the order page again, with the errors at their fields and what was typed."""
    user, form = await posted_form(request)
    sd = queue_def(slug)
    require_roles(user, *sd.roles)
    if not REFERENCE.fullmatch(reference.strip().upper()):
        # Never shown back: what is in the address may be anything, a personal number even.
        raise ApiError(404, "not_found", "Beställningen finns inte.")
    ad = adapters(request)
    takes_away = await run_in_threadpool(orders.restricts, ad, reference) if sd.stage == Stage.HARM_ASSESSMENT else None
    decision, errors, values = parse_decision(sd.stage.value, form, takes_away)
    status, top = 422, ""
    if decision is not None:
        try:
            await decide(ad, reference, sd.api_slug, decision.model_dump(), user)
            return RedirectResponse(f"/ko/{slug}?klar={quote(reference.upper())}", status_code=303)
        except ApiError as exc:
            if exc.status == 404:
                raise
            status, top = exc.status, exc.message
        except NotAllowed as exc:
            status, top = 403, exc.message
    ref = reference.strip().upper()
    summary = summary_links([(FIRST_INPUT.get(k, k), DECISION_LABELS.get(k, k), m) for k, m in errors.items()])
    if top:
        summary.insert(0, {"href": "#decision", "text": top})
    return order_page_response(request, user, ref, status=status, summary=summary,
                               decision_errors={k: [m] for k, m in errors.items()}, decision_values=values)
