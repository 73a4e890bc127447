"""The order lifecycle against the orders database: submit, read, propose decisions, transition, cancel.

Both entrypoints use it: the app (forms/) when people act, the flows (via tasks/steps/stages.py) when the
routine moves on. Every status change goes through `transition`, which writes the audit log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import personnummer, sla
from models.authority import Decider, OrderFacts, Refusal, refusal
from models.calendar import callback_deadline, due_at, local, urgent_due_at
from models.reference import format_reference
from models.routine import FLOW_NAMES, STAGE_STATUS, Stage, StagePlan, stage_def
from models.rules import CheckResult, OpenOrder, RuleContext, check_assessment, check_order, restricts_access
from models.schemas import HistoryEntry, OrderView, Problem, StageView
from models.status import CANCELLABLE, FINAL, OrderStatus, check_transition
from models.tables import AuditEvent, Decision, Order, ReferenceCounter, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.gateway import known_access_state
from tasks.steps import confirmations, deadlines
from tasks.steps.audit_extract import SEARCH_ACTION
from tasks.steps.progress import order_progress


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """The order is not in a state where this can be done (HTTP 409)."""


class Invalid(ValueError):
    """A decision whose content does not hold together (HTTP 422 with every problem)."""
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.code for p in problems))
        self.problems = problems


class Forbidden(PermissionError):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass
class SubmitOutcome:
    kind: str                      # created | replayed | conflict | invalid
    order: Order | None = None
    check: CheckResult = field(default_factory=CheckResult)


def utcnow() -> datetime:
    return datetime.now(UTC)


# The purposes for which the patient's open orders are looked up (the duplicate warning): a person about to
# send an order. Not when a stored order is checked again (it is open itself) or a form is printed.
DUPLICATE_CHECK = ("validate", "submit")


def rule_context(ad: Adapters, s: Session, raw: Any, now: datetime, actor: str, purpose: str, *,
                 callback_phone_required: bool = False, exclude: str | None = None) -> RuleContext:
    """What the rules need to know about the world. For a restore, that includes the patient's access state:
    reading it by personal number reveals whether someone is restricted, so it is audited as a search by
    personal number (`purpose` says why: validate, submit, revalidate). Before a person sends an order it
    also holds the patient's open orders, for the duplicate warning; that lookup is audited by
    `audit_duplicates` when the warning shows the person another order (a lookup that shows nothing
    reveals nothing, and the form's live validation would otherwise log a search at every change)."""
    state = None
    open_now: list[OpenOrder] = []
    is_restore = isinstance(raw, dict) and raw.get("order_type") == "restore_access"
    pnr = _patient(raw, now) if is_restore or purpose in DUPLICATE_CHECK else None
    if pnr is not None and is_restore:
        state = known_access_state(s, pnr.digits, manual=ad.gateway.manual)
        audit.record(s, actor=actor, action=SEARCH_ACTION, patient_pnr=pnr.digits, at=now,
                     detail={"purpose": purpose, "known": state is not None})
    if pnr is not None and purpose in DUPLICATE_CHECK:
        open_now = [o for o in open_orders(s, pnr.digits) if o.reference != exclude]
    return RuleContext(now=now, care_units=directory.care_units(s),
                       region_hours={c: r.hours for c, r in ad.regions.items()}, access=state,
                       open_orders=open_now, callback_phone_required=callback_phone_required,
                       orderer_region=_orderer_region(s, actor))


def _orderer_region(s: Session, actor: str) -> str | None:
    """A clinician of a region orders only for that region's care units (checked on submit, validate and
    print alike). Support registering a paper order is checked by its own rule (tasks/steps/paper_orders.py)."""
    person = directory.staff(s, actor)
    if person is None or not directory.has_role(person, "clinician"):
        return None
    return person.region


def audit_duplicates(s: Session, actor: str, raw: Any, result: CheckResult, now: datetime, purpose: str) -> None:
    """The duplicate warning named another order of the patient's: audited as a search by personal number."""
    pnr = _patient(raw, now)
    if pnr is not None and any(w.code == "duplicate_open_order" for w in result.warnings):
        audit.record(s, actor=actor, action=SEARCH_ACTION, patient_pnr=pnr.digits, at=now,
                     detail={"purpose": purpose, "duplicate_warning": True})


def _patient(raw: Any, now: datetime) -> personnummer.PersonalNumber | None:
    if not isinstance(raw, dict):
        return None
    try:
        return personnummer.parse(str(raw.get("patient_personal_number", "")), local(now).date())
    except personnummer.InvalidPersonalNumber:
        return None


def open_orders(s: Session, patient_pnr: str) -> list[OpenOrder]:
    """The patient's orders that are not finished, oldest first."""
    rows = s.scalars(select(Order).where(Order.patient_pnr == patient_pnr, Order.status.not_in(list(FINAL)))
                     .order_by(Order.id))
    return [OpenOrder(o.reference, o.order_type, tuple(o.actions or ()), o.guardian_pnr, o.minor_recipient)
            for o in rows]


def check(ad: Adapters, raw: Any, now: datetime, actor: str, *, intake: bool = False,
          exclude: str | None = None) -> CheckResult:
    """`intake`: a person about to send the order digitally (the API's validate, the web form); `exclude`:
    an order the body already made (a replayed submit is not its own duplicate)."""
    with ad.db.session() as s:
        result = check_order(raw, rule_context(ad, s, raw, now, actor, "validate", callback_phone_required=intake,
                                               exclude=exclude))
        audit_duplicates(s, actor, raw, result, now, "validate")
        return result


def detached(ad: Adapters, *where: Any) -> Order | None:
    """The order matching `where`, read in a session of its own and usable after it, or None."""
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(*where))
        if order is not None:
            s.expunge(order)
        return order


def by_idempotency_key(ad: Adapters, key: str) -> Order | None:
    """The order a (scoped) idempotency key already made, if any."""
    return detached(ad, Order.idempotency_key == key)


def stored_request(order: Order) -> dict[str, Any]:
    """The stored order as a request body again, for the rules to check it once more: the 12-digit numbers
    it was stored with, and its reason (checked when it was submitted; the rules only bound its length)."""
    raw: dict[str, Any] = {
        "order_type": order.order_type, "initiative": order.initiative, "actions": list(order.actions or []),
        "patient_personal_number": order.patient_pnr, "patient_protected_identity": bool(order.patient_protected),
        "guardian_personal_number": order.guardian_pnr, "guardian_protected_identity": bool(order.guardian_protected),
        "identity_checked_in_person": bool(order.identity_checked),
        "urgent": bool(order.urgent), "reason": order.reason or "", "care_unit_hsa_id": order.care_unit_hsa_id,
        "region": order.region, "callback_phone": order.callback_phone}
    if order.order_type == "minor_access":
        raw["minor_access"] = {"grant": order.minor_grant, "recipient": order.minor_recipient,
                               "child_consent": order.child_consent}
    return raw


def request_hash(raw: Any) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def _next_reference(s: Session, year: int) -> str:
    for _ in range(5):
        n = s.execute(update(ReferenceCounter).where(ReferenceCounter.year == year)
                      .values(last=ReferenceCounter.last + 1).returning(ReferenceCounter.last)).scalar()
        if n is not None:
            return format_reference(year, n)
        try:
            with s.begin_nested():
                s.add(ReferenceCounter(year=year, last=0))
        except IntegrityError:
            pass
    raise RuntimeError("could not allocate a reference")


def submit(ad: Adapters, raw: Any, actor: str, now: datetime, *, idempotency_key: str | None = None,
           channel: str = "digital", reference: str | None = None, paper_received_on: datetime | None = None,
           paper_registered_by: str | None = None) -> SubmitOutcome:
    """Store a valid order (status `submitted`) and its deadlines; the caller then starts its flow run.

    A signed paper order registered by support (tasks/steps/paper_orders.py) passes `channel="paper"` and when and
    by whom it was received, so the order and that record are stored in one transaction."""
    digest = request_hash(raw)
    with ad.db.session() as s:
        if idempotency_key:
            first = s.scalar(select(Order).where(Order.idempotency_key == idempotency_key))
            if first is not None:
                return SubmitOutcome("replayed" if first.request_hash == digest else "conflict", first)
        result = check_order(raw, rule_context(ad, s, raw, now, actor, "submit"))
        if not result.ok or result.order is None:
            return SubmitOutcome("invalid", check=result)
        audit_duplicates(s, actor, raw, result, now, "submit")
        req = result.order
        region = ad.region(req.region)
        hours = region.hours
        callback = callback_deadline(now, region.callback_deadline_minutes)
        ref = reference or _next_reference(s, local(now).year)
        order = Order(
            reference=ref, order_type=req.order_type, initiative=req.initiative, actions=list(req.actions),
            patient_pnr=req.patient_personal_number, patient_protected=req.patient_protected_identity,
            guardian_pnr=req.guardian_personal_number, guardian_protected=req.guardian_protected_identity,
            minor_grant=req.minor_access.grant if req.minor_access else None,
            minor_recipient=req.minor_access.recipient if req.minor_access else None,
            child_consent=bool(req.minor_access and req.minor_access.child_consent),
            identity_checked=req.identity_checked_in_person, urgent=req.urgent, reason=req.reason,
            callback_phone=req.callback_phone,
            care_unit_hsa_id=req.care_unit_hsa_id, region=req.region, status=OrderStatus.SUBMITTED,
            channel=channel, submitted_by=actor, created_at=now, updated_at=now,
            due_at=urgent_due_at(now, region.urgent_target_hours) if req.urgent else due_at(now, hours),
            callback_due_at=callback if req.urgent else None,
            flow_name=FLOW_NAMES[req.order_type], idempotency_key=idempotency_key, request_hash=digest,
            paper_received_on=paper_received_on, paper_registered_by=paper_registered_by,
        )
        s.add(order)
        s.flush()
        audit.record(s, actor=actor, action="submitted", order=order, to_status=OrderStatus.SUBMITTED,
                     channel=channel, at=now, detail={"warnings": [w.code for w in result.warnings]})
        deadlines.schedule(s, order)
        return SubmitOutcome("created", order, result)


def get(s: Session, reference: str) -> Order:
    order = s.scalar(select(Order).where(Order.reference == reference.strip().upper()))
    if order is None:
        raise NotFound(reference)
    return order


def transition(s: Session, order: Order, to: OrderStatus | str, *, actor: str, action: str | None = None,
               detail: dict[str, Any] | None = None, at: datetime | None = None) -> None:
    to = OrderStatus(to)
    current = OrderStatus(order.status)
    if current == to:
        return
    check_transition(current, to)
    at = at or utcnow()
    order.status = to
    order.updated_at = at
    audit.record(s, actor=actor, action=action or f"status:{to}", order=order, from_status=current,
                 to_status=to, detail=detail, at=at)


def facts(s: Session, order: Order) -> OrderFacts:
    unit = directory.unit(s, order.care_unit_hsa_id)
    assessed = next((d.decided_by for d in order.decisions
                     if d.stage == "harm_assessment" and d.state == "accepted"), None)
    approval_role = StagePlan.from_json(order.stage_plan).role("approval") or "head_of_department"
    return OrderFacts(submitted_by=order.submitted_by, care_unit_hsa_id=order.care_unit_hsa_id,
                      unit_head_hsa_id=unit.head_hsa_id if unit else None, region=order.region,
                      initiative=order.initiative, approval_role=approval_role, assessed_by=assessed)


def decider(person: Staff | None) -> Decider | None:
    if person is None:
        return None
    return Decider(person.hsa_id, tuple(person.roles), person.unit_hsa_id, person.region)


def propose(ad: Adapters, reference: str, stage: str, actor: str, body: dict[str, Any],
            now: datetime | None = None) -> tuple[Order, Decision]:
    """A person's decision, checked and stored as `proposed`; the flow accepts it after its own re-check.
    Its free text (the stage's `text_field`) stays here, in the orders database."""
    now = now or ad.now()
    sd = stage_def(stage)
    outcome = sd.outcome(body)
    text = str(body.get(sd.text_field, "")) if sd.text_field else ""
    detail = {k: v for k, v in body.items() if k != sd.text_field}
    with ad.db.session() as s:
        order = get(s, reference)
        # Who may decide comes before the order's status (403 before 409): a person of another region or
        # unit learns nothing about where the order stands.
        person = directory.staff(s, actor)
        why = refusal(stage, decider(person), facts(s, order))
        if why:
            audit.record(s, actor=actor, action="decision_refused", order=order, from_status=order.status,
                         detail={"stage": stage, "why": why.code, "by": "app"}, at=now)
            s.commit()
            raise Forbidden(why)
        if sd.stage == Stage.HARM_ASSESSMENT and (problems := check_assessment(
                body, restricts=restricts_access(order.order_type, order.minor_grant), rationale_required=False)):
            raise Invalid(problems)
        if order.status != STAGE_STATUS[Stage(stage)]:
            raise Conflict(f"order is {order.status}, not {STAGE_STATUS[Stage(stage)]}")
        pending = [d for d in order.decisions if d.stage == stage and d.state == "proposed"]
        if pending:
            raise Conflict("a decision on this stage is already being processed")
        if stage == "callback":
            # The clock stops when on-call records the callback, in this transaction: the escalation
            # dispatcher claims the same deadline row, so one of the two wins, never both.
            deadlines.meet(s, order.reference, "callback", now)
        d = Decision(order_id=order.id, stage=stage, decided_by=person.hsa_id if person else actor,
                     outcome=outcome, detail=detail, text=text, state="proposed", created_at=now)
        s.add(d)
        s.flush()
        audit.record(s, actor=actor, action="decision_proposed", order=order, from_status=order.status,
                     detail={"stage": stage, "outcome": outcome, "decision_id": d.id}, at=now)
        return order, d


def restricts(ad: Adapters, reference: str) -> bool | None:
    """Whether the order takes access away (models.rules.restricts_access); None for no such order."""
    with ad.db.session() as s:
        row = s.execute(select(Order.order_type, Order.minor_grant)
                        .where(Order.reference == reference.strip().upper())).first()
    return restricts_access(row[0], row[1]) if row else None


def assessment_problems(ad: Adapters, reference: str, body: dict[str, Any]) -> list[Problem]:
    """A person's harm assessment checked as the API and the form require: rationale and consistency."""
    with ad.db.session() as s:
        order = get(s, reference)  # NotFound: the 404 comes before any complaint about the body
        takes_away = restricts_access(order.order_type, order.minor_grant)
    return check_assessment(body, restricts=takes_away)


def cancel(ad: Adapters, reference: str, actor: str, reason: str, now: datetime | None = None) -> Order:
    now = now or ad.now()
    with ad.db.session() as s:
        order = get(s, reference)
        person = directory.staff(s, actor)
        if not (actor == order.submitted_by or directory.has_role(person, "admin")):
            raise Forbidden(Refusal("wrong_role", "Endast beställaren eller en administratör kan återkalla."))
        if OrderStatus(order.status) not in CANCELLABLE:
            raise Conflict(f"order is {order.status}")
        transition(s, order, OrderStatus.CANCELLED, actor=actor, action="cancelled",
                   detail={"has_reason": bool(reason)}, at=now)
        if reason:
            s.add(Decision(order_id=order.id, stage="cancel", decided_by=actor, outcome="cancel", detail={},
                           text=reason, state="accepted", created_at=now))
        confirmations.queue(ad, s, order)
        return order


def history(s: Session, order: Order) -> list[HistoryEntry]:
    rows = s.scalars(select(AuditEvent).where(AuditEvent.order_reference == order.reference,
                                              AuditEvent.to_status.is_not(None)).order_by(AuditEvent.id))
    return [HistoryEntry(at=e.at, actor=e.actor, **{"from": e.from_status}, to=e.to_status or "",
                         note=e.action) for e in rows]


def view(s: Session, order: Order) -> OrderView:
    """Everything the API may show of an order; the app leaves out what the reader is not entitled to."""
    return OrderView(reference=order.reference, order_type=order.order_type, status=order.status,
                     urgent=order.urgent, patient=personnummer.mask(order.patient_pnr),
                     created_at=order.created_at, due_at=order.due_at, callback_due_at=order.callback_due_at,
                     history=history(s, order), callback_phone=order.callback_phone, stages=stages(s, order))


def stages(s: Session, order: Order) -> list[StageView]:
    return [StageView(stage=p.stage.value, required=p.required, rule=p.rule, reason=p.reason, state=p.state,
                      role=p.role, decided_by=p.decided_by, decided_at=p.decided_at, outcome=p.outcome)
            for p in order_progress(s, order)]


def problems_json(problems: list[Problem]) -> list[dict[str, str]]:
    return [p.model_dump() for p in problems]


def overdue(order: Order, now: datetime) -> bool:
    """Red on the pages: the one rule of models.sla (a failed order is final, never late)."""
    return sla.is_overdue(order.due_at, order.status, now)
