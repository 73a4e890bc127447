"""Work queues (/ko/<slug>): the orders waiting for a stage that this person may decide, each with its
decision form. Which orders, who may decide and what the form takes all come from models/routine.py; the
orders are selected in SQL by tasks/steps/queues.py and each row is checked again with models.authority."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from forms.actions import decide
from forms.auth import NotAllowed, User, require_roles, require_user
from forms.deps import adapters, now
from forms.errors import ApiError
from forms.pages.common import form_str, intro, posted_form, render, summary_links
from forms.pages.orders import log_reads
from models import sla
from models.authority import refusal
from models.reference import REFERENCE
from models.routine import BY_QUEUE_SLUG, Stage, StageDef
from models.rules import check_assessment
from models.tables import Order
from tasks.adapters import Adapters, directory
from tasks.steps import orders
from tasks.steps.queues import queue_query

router = APIRouter(include_in_schema=False)
QUEUE_LIMIT = 200  # most urgent first; a longer queue is a staffing problem, not a page to scroll

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


def _seconds_left(due: datetime | None, at: datetime) -> int | None:
    return None if due is None else max(0, math.ceil((due - at).total_seconds()))


def queue_items(ad: Adapters, user: User, sd: StageDef, at: datetime) -> list[QueueItem]:
    stage = sd.stage.value
    with ad.db.session() as s:
        rows = list(s.scalars(queue_query(stage, user.hsa_id, user.roles, user.region).limit(QUEUE_LIMIT)))
        decider = orders.decider(directory.staff(s, user.hsa_id))
        items = []
        for o in rows:
            why = refusal(stage, decider, orders.facts(s, o))
            if why and why.code not in ("own_order", "same_as_assessor"):
                continue  # another unit's or region's decision: not this person's queue
            unit = directory.unit(s, o.care_unit_hsa_id)
            pending = any(d.stage == stage and d.state == "proposed" for d in o.decisions)
            left = _seconds_left(o.callback_due_at, at) if sd.stage == Stage.CALLBACK else None
            overdue = left == 0 if left is not None else sla.is_overdue(o.due_at, o.status, at)
            items.append(QueueItem(o, unit.name if unit else o.care_unit_hsa_id, overdue,
                                   why.message if why else None, pending, ad.region(o.region).review_interval_days,
                                   seconds_left=left))
        # The page shows each order's masked number and reason: a read of personal data, logged per order,
        # in the same transaction as the query (one commit however long the queue).
        log_reads(s, user, [it.order for it in items], "queue", at)
        for it in items:
            s.expunge(it.order)
    return items


def _queue(slug: str) -> StageDef:
    if slug not in BY_QUEUE_SLUG:
        raise ApiError(404, "not_found", "Det finns ingen sådan arbetskö.")
    return BY_QUEUE_SLUG[slug]


def _queue_page(request: Request, user: User, sd: StageDef, items: list[QueueItem], status: int = 200,
                summary: list[dict[str, str]] | None = None, notice: str | None = None) -> Response:
    q = {"stage": sd.stage.value, "title": sd.title_sv, "roles": sd.roles, "button": sd.button_sv,
         "intro": intro(sd, adapters(request), user)}
    return render(request, "queue.html.j2", {
        "user": user, "title": ("Fel: " if summary else "") + f"Arbetskö: {sd.title_sv}", "q": q,
        "slug": sd.queue_slug, "items": items, "summary": summary or [], "notice": notice}, status)


@router.get("/ko/{slug}", response_class=HTMLResponse)
def queue(request: Request, slug: str, klar: str = "") -> Response:
    user = require_user(request)
    sd = _queue(slug)
    require_roles(user, *sd.roles)
    notice = f"Beslutet för {klar} är registrerat." if REFERENCE.fullmatch(klar) else None
    return _queue_page(request, user, sd, queue_items(adapters(request), user, sd, now(request)), notice=notice)


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
    user, form = await posted_form(request)
    sd = _queue(slug)
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
            status, top = exc.status, exc.message
        except NotAllowed as exc:
            status, top = 403, exc.message
    items = queue_items(ad, user, sd, now(request))
    # No such order: the address is not shown back (RO-2026-191212121212 is shaped like a reference too).
    ref = reference.upper() if status != 404 else ""
    for it in items:
        if it.order.reference == ref:
            it.errors, it.values = {k: [msg] for k, msg in errors.items()}, values
    summary = summary_links([(f"{ref}-{FIRST_INPUT.get(k, k)}", f"{ref} – {DECISION_LABELS.get(k, k)}", m)
                             for k, m in errors.items()])
    if top:
        summary.insert(0, {"href": f"#{ref}" if any(i.order.reference == ref for i in items) else "#main",
                           "text": f"{ref}: {top}" if ref else top})
    return _queue_page(request, user, sd, items, status, summary)
