"""Paper orders (reservrutin, DOMAIN.md §3.5): registering a received, signed paper form, and handing an
order that fell back to paper back to the digital route.

- `register_paper_order`: support staff register a signed paper form. Without a reference (a blank form
  filled in by hand) it becomes a new order with channel `paper`, and its run starts at the beginning of
  the routine. With the reference printed on a pre-filled form, the order in `paper_fallback` with that
  reference continues from the stage it fell back at (its reference, history and decisions are kept) and
  its channel becomes `paper` (the audit row keeps the previous one). Either way, if the execution system
  is still down when the order gets there, it goes to the manual execution step, never to paper again.
  Whether the signature was checked lives in the registration's audit row (registration refuses an
  unchecked one), so `paper_registered_by` set means a checked signature.
- `continue_digitally`: an order in `paper_fallback` goes back to the stage it was at and gets a new run
  (`POST /api/orders/{reference}/resume-digital`, and the registration above).
- `resume_when_back`: the housekeeping sweep does the same by itself, as `system`, once the execution
  system answers again, for orders whose signed paper form has not arrived.

Both write the orders database first and then tell Prefect; if Prefect cannot be told now, the
housekeeping reconciler starts the run later (a new order has no run yet; a continued order's old run has
ended), with the same idempotency key, so there is never a second run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import personnummer
from models.authority import Refusal
from models.calendar import local
from models.clock import STOCKHOLM
from models.reference import REFERENCE
from models.routine import StagePlan, first_status
from models.schemas import Problem
from models.status import ALLOWED, OrderStatus
from models.tables import AuditEvent, Order
from tasks.adapters import Adapters, audit, directory
from tasks.steps import orders, paging, runs
from tasks.steps.orders import Conflict, Forbidden, NotFound

log = logging.getLogger(__name__)

PAPER_FIELDS = ("reference", "received_on", "signature_checked", "orderer_hsa_id")
# For a continued order, these fields of the body (when given) must agree with the stored order: a mistyped
# reference must never continue another patient's order.
MATCHED_FIELDS = ("order_type", "patient_personal_number", "care_unit_hsa_id", "region")
REGISTER_ROLES = ("support",)
RESUME_ROLES = ("support", "admin")
MESSAGES = {
    "required": "Fältet måste fyllas i.",
    "invalid_value": "Ogiltigt värde.",
    "invalid_reference": "Referensen ska se ut som RO-2026-000123.",
    "unknown_reference": "Det finns ingen beställning med den referensen. Kontrollera referensen på blanketten, "
                         "eller registrera blanketten utan referens.",
    "invalid_date": "Ange datumet som ÅÅÅÅ-MM-DD.",
    "date_in_future": "Mottagningsdatumet kan inte ligga i framtiden.",
    "signature_not_checked": "Underskriften på pappersblanketten måste vara kontrollerad innan den registreras.",
    "unknown_staff": "Personen finns inte i personalkatalogen.",
    "does_not_match_order": "Stämmer inte med beställningen som referensen pekar på.",
    "orderer_not_clinician": "Beställaren ska vara aktiv vårdpersonal. Den som står som beställare på blanketten "
                             "har inte den rollen i personalkatalogen.",
    "orderer_other_region": "Beställaren ska vara vårdpersonal i beställningens region.",
}


class PaperInvalid(ValueError):
    """The registration has field errors (HTTP 422, every problem at once)."""

    def __init__(self, errors: list[Problem]) -> None:
        super().__init__(", ".join(f"{e.field}:{e.code}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Registered:
    kind: str                  # created | replayed | continued
    reference: str
    status: str
    warnings: list[Problem] = field(default_factory=list)


def _problem(fieldname: str, code: str) -> Problem:
    return Problem(field=fieldname, code=code, message=MESSAGES[code])


def _received_on(value: Any, today: date, errors: list[Problem]) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        errors.append(_problem("received_on", "required"))
        return None
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value).strip())
    except ValueError:
        errors.append(_problem("received_on", "invalid_date"))
        return None
    if day > today:
        errors.append(_problem("received_on", "date_in_future"))
        return None
    return day


def _received_at(day: date) -> datetime:
    """The column holds a timestamp: midnight Swedish time of the day the form arrived."""
    return datetime.combine(day, time(0), tzinfo=STOCKHOLM)


def fallback_occasions(s: Session, reference: str) -> int:
    """How many times the order has moved to `paper_fallback` (1 for the first time). Each occasion gets
    its own email, so a re-run never doubles one and a second fallback is still told."""
    return int(s.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.order_reference == reference, AuditEvent.to_status == OrderStatus.PAPER_FALLBACK.value)) or 0)


def status_before_fallback(s: Session, order: Order) -> OrderStatus:
    """The stage the order was at when it fell back to paper, to continue from there."""
    last = s.scalar(select(AuditEvent).where(
        AuditEvent.order_reference == order.reference, AuditEvent.to_status == OrderStatus.PAPER_FALLBACK.value)
        .order_by(AuditEvent.id.desc()).limit(1))
    before = OrderStatus(last.from_status) if last is not None and last.from_status else None
    if before is not None and before in ALLOWED[OrderStatus.PAPER_FALLBACK]:
        return before
    # Fell back before the run planned its stages (from `submitted`): start at the first open stage.
    if not order.stage_plan:
        raise Conflict("the order fell back to paper before its stages were planned")
    return first_status(StagePlan.from_json(order.stage_plan))


def _check_person(s: Session, hsa_id: str, roles: tuple[str, ...], region: str | None) -> str:
    person = directory.staff(s, hsa_id)
    if person is None:
        raise Forbidden(Refusal("not_found", "Personen finns inte i personalkatalogen."))
    if not directory.has_role(person, *roles):
        raise Forbidden(Refusal("wrong_role", "Du har inte behörighet till detta."))
    if region and person.region and person.region != region and not directory.has_role(person, "admin"):
        raise Forbidden(Refusal("other_region", "Beställningen hör till en annan region."))
    return person.hsa_id


async def _retire_waiting_run(ad: Adapters, run_id: str | None) -> None:
    """A run still suspended at a human step would wait for ever next to the new one: cancel it. A run
    that ended is left as it is (its history stays true); a running one ends by itself (every step
    re-reads the order)."""
    if not run_id:
        return
    try:
        run = await ad.engine.read_run(run_id)
        if run.state in ("paused", "scheduled", "pending"):
            await ad.engine.set_state(run_id, "cancelled", "order continues in a new run")
    except Exception as exc:  # the engine is down: the new run is started by the reconciler later anyway
        log.info("could not check the old run: %s", type(exc).__name__)


async def _start_next_run(ad: Adapters, reference: str, old_run: str | None) -> None:
    await _retire_waiting_run(ad, old_run)
    # The same count the reconciler uses for its restart key: if both start the order's next run, they use
    # the same idempotency key and the engine makes one run.
    await runs.start_run(ad, reference, restart=runs.runs_started(ad, reference))


def _back_to_digital(s: Session, order: Order, actor: str, action: str, detail: dict[str, Any],
                     now: datetime) -> OrderStatus:
    target = status_before_fallback(s, order)
    orders.transition(s, order, target, actor=actor, action=action, detail=detail, at=now)
    return target


async def continue_digitally(ad: Adapters, reference: str, actor: str, *, now: datetime | None = None) -> Order:
    """Support or admin: the execution system is back, so an order in `paper_fallback` returns to the stage
    it was at (normally `executing`) and a new run completes it digitally. Nothing is lost: the order,
    its decisions and its history are the same rows; the paper form is no longer needed."""
    now = now or ad.now()
    with ad.db.session() as s:
        who = _check_person(s, actor, RESUME_ROLES, orders.get(s, reference).region)
    return await _resume(ad, reference, who, {}, now)


async def _resume(ad: Adapters, reference: str, who: str, detail: dict[str, Any], now: datetime) -> Order:
    with ad.db.session() as s:
        order = orders.get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK:
            raise Conflict(f"order is {order.status}, not paper_fallback")
        _back_to_digital(s, order, who, "resumed_digital",
                         {"occasion": fallback_occasions(s, order.reference), **detail}, now)
        old_run = order.flow_run_id
    await _start_next_run(ad, order.reference, old_run)
    return order


SYSTEM = "system"


@dataclass
class Probe:
    """When the sweep may next ask the execution system, and how long it waits after a failed probe.
    Kept by whoever runs the sweep in a loop (the embedded serving process); production's housekeeping runs
    start fresh each minute, which is gentle enough on its own."""
    after: datetime | None = None
    delay: float = 0.0


def _waiting_on_paper(s: Session, now: datetime, base: float) -> list[str]:
    """Orders whose execution fell back to paper long enough ago and whose signed form has not arrived.
    Only a fallback at execution is retried: the execution system is all the probe can vouch for. The
    wait doubles with every automatic resume the order already had (up to ten times `base`), so a system
    that answers the probe but still fails the execution does not bounce an order every minute."""
    out = []
    for ref in s.scalars(select(Order.reference).where(
            Order.status == OrderStatus.PAPER_FALLBACK.value, Order.paper_received_on.is_(None),
            Order.channel != "paper").order_by(Order.id).limit(500)):
        last = s.scalar(select(AuditEvent).where(
            AuditEvent.order_reference == ref, AuditEvent.to_status == OrderStatus.PAPER_FALLBACK.value)
            .order_by(AuditEvent.id.desc()).limit(1))
        if last is None or last.from_status != OrderStatus.EXECUTING.value:
            continue
        tried = int(s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.order_reference == ref, AuditEvent.action == "resumed_digital",
            AuditEvent.actor == SYSTEM)) or 0)
        if last.at <= now - timedelta(seconds=min(base * 2 ** tried, 10 * base)):
            out.append(ref)
    return out


async def resume_when_back(ad: Adapters, now: datetime | None = None, probe: Probe | None = None) -> list[str]:
    """Keep the fallback email's promise ("verkställs digitalt när systemet fungerar igen"): when the
    execution system answers again, every order whose execution fell back to paper and whose signed form
    has not arrived goes back to the digital route, as `POST /api/orders/{ref}/resume-digital` does,
    audited as by `system`.

    An order is first tried `paper_resume_seconds` after it fell back (the execute task's retries have just
    seen the system down). The probe is one cheap call for all orders; after a failed one the next waits
    that long, doubling up to ten times as long, so a system that stays down is not hammered. An order
    whose signed form arrives meanwhile is registered by support and goes to the manual step instead.
    Returns the references resumed."""
    now = now or ad.now()
    probe = probe or Probe()
    base = ad.settings.paper_resume_seconds
    if probe.after is not None and now < probe.after:
        return []
    with ad.db.session() as s:
        refs = _waiting_on_paper(s, now, base)
    if not refs:
        return []
    if not ad.gateway.available():
        probe.delay = min(max(base, probe.delay * 2), 10 * base)
        probe.after = now + timedelta(seconds=probe.delay)
        log.info("execution system still down; %d orders stay on paper, next probe in %.0f s", len(refs),
                 probe.delay)
        return []
    probe.after, probe.delay = None, 0.0
    done = []
    for ref in refs:
        try:
            await _resume(ad, ref, SYSTEM, {"why": "gateway_available"}, now)
        except Exception as exc:  # support got there first, or a concurrent sweep: the next round looks again
            log.info("%s not resumed now: %s", ref, type(exc).__name__)
            continue
        done.append(ref)
    return done


@dataclass
class PaperFields:
    """The registration's own fields, checked."""
    errors: list[Problem]
    reference: str | None
    received: date | None
    orderer: str | None


def _reference_field(raw: Mapping[str, Any], errors: list[Problem]) -> str | None:
    ref_raw = raw.get("reference")
    if ref_raw in (None, ""):
        return None
    if not isinstance(ref_raw, str) or not REFERENCE.fullmatch(ref_raw.strip()):
        errors.append(_problem("reference", "invalid_reference"))
        return None
    return ref_raw.strip().upper()


def _signature_field(raw: Mapping[str, Any], errors: list[Problem]) -> None:
    signed = raw.get("signature_checked")
    if signed is None:
        errors.append(_problem("signature_checked", "required"))
    elif not isinstance(signed, bool):
        errors.append(_problem("signature_checked", "invalid_value"))
    elif not signed:
        errors.append(_problem("signature_checked", "signature_not_checked"))


def _orderer_field(ad: Adapters, raw: Mapping[str, Any], errors: list[Problem]) -> str | None:
    orderer = raw.get("orderer_hsa_id")
    if orderer in (None, ""):
        return None
    if not isinstance(orderer, str):
        errors.append(_problem("orderer_hsa_id", "invalid_value"))
        return None
    with ad.db.session() as s:
        person = directory.staff(s, orderer)
    if person is None:
        errors.append(_problem("orderer_hsa_id", "unknown_staff"))
        return None
    return person.hsa_id


def _paper_fields(ad: Adapters, raw: Mapping[str, Any], now: datetime) -> PaperFields:
    errors: list[Problem] = []
    reference = _reference_field(raw, errors)
    received = _received_on(raw.get("received_on"), local(now).date(), errors)
    _signature_field(raw, errors)
    orderer = _orderer_field(ad, raw, errors)
    return PaperFields(errors, reference, received, orderer)


def paper_field_errors(ad: Adapters, raw: Mapping[str, Any], now: datetime) -> list[Problem]:
    """The problems of the registration's own fields (reference, date, signature, orderer), for a page that
    reports them together with its own."""
    return _paper_fields(ad, raw, now).errors


def _mismatches(order: Order, raw: Mapping[str, Any], now: datetime) -> list[Problem]:
    out: list[Problem] = []
    for name in MATCHED_FIELDS:
        given = raw.get(name)
        if given in (None, ""):
            continue
        if name == "patient_personal_number":
            try:
                same = personnummer.parse(str(given), local(now).date()).digits == order.patient_pnr
            except personnummer.InvalidPersonalNumber:
                same = False
        elif name == "care_unit_hsa_id":
            same = str(given).strip().upper() == order.care_unit_hsa_id
        else:
            same = str(given).strip() == getattr(order, name)
        if not same:
            out.append(_problem(name, "does_not_match_order"))
    return out


async def register_paper_order(ad: Adapters, raw: Any, registered_by: str, *, now: datetime | None = None,
                               idempotency_key: str | None = None) -> Registered:
    """Register a received, signed paper order, then start (or continue) its run.

    `raw` is the body of `POST /api/orders` plus `received_on` (date), `signature_checked` (must be true),
    optionally `reference` (printed on a pre-filled form) and `orderer_hsa_id` (who signed as orderer;
    defaults to the person registering). Raises PaperInvalid (422), orders.Forbidden (403), Conflict (409:
    the referenced order is not in `paper_fallback`)."""
    now = now or ad.now()
    with ad.db.session() as s:  # the role first: a person who may not register learns nothing about orders
        registrar = _check_person(s, registered_by, REGISTER_ROLES, None)
    if not isinstance(raw, Mapping):
        raise PaperInvalid([Problem(field="", code="invalid_value", message="Förväntade ett JSON-objekt.")])
    fields = _paper_fields(ad, raw, now)
    existing = _referenced_order(ad, fields)
    region = existing.region if existing is not None else raw.get("region")
    with ad.db.session() as s:  # support registers the paper forms that arrive at its own region's postal route
        _check_person(s, registrar, REGISTER_ROLES, region if isinstance(region, str) else None)
    if existing is None:
        _orderer_rules(ad, fields, region if isinstance(region, str) else None)
    if existing is not None:
        errors = fields.errors + _mismatches(existing, raw, now)
        if errors:
            raise PaperInvalid(errors)
        assert fields.received is not None
        return await _continue_paper(ad, existing.reference, registrar, fields.received, now)
    return await _register_new(ad, raw, registrar, fields, now, idempotency_key)


def _orderer_rules(ad: Adapters, fields: PaperFields, region: str | None) -> None:
    """The person named as orderer becomes the order's submitter (reads it, its paper form, and is kept out
    of its decisions by four eyes), so only an active clinician of the order's region can be named. Without
    a name the registering support person of that region is the orderer (checked before this)."""
    if fields.orderer is None:
        return
    with ad.db.session() as s:
        person = directory.staff(s, fields.orderer)  # active staff only (unknown_staff was reported already)
    if person is None:
        return
    if not directory.has_role(person, "clinician"):
        fields.errors.append(_problem("orderer_hsa_id", "orderer_not_clinician"))
    elif region is not None and person.region != region:
        fields.errors.append(_problem("orderer_hsa_id", "orderer_other_region"))


def _referenced_order(ad: Adapters, fields: PaperFields) -> Order | None:
    """The stored order a pre-filled form names; an unknown reference is one more problem."""
    if fields.reference is None:
        return None
    with ad.db.session() as s:
        existing = s.scalar(select(Order).where(Order.reference == fields.reference))
    if existing is None:
        fields.errors.append(_problem("reference", "unknown_reference"))
    return existing


async def _register_new(ad: Adapters, raw: Mapping[str, Any], registrar: str, fields: PaperFields, now: datetime,
                        idempotency_key: str | None) -> Registered:
    """A paper order the system has never seen (printed blank, or typed in while the system was down)."""
    order_raw = {k: v for k, v in raw.items() if k not in PAPER_FIELDS}
    if fields.errors:  # every problem at once: the order's own fields too
        raise PaperInvalid(fields.errors + orders.check(ad, order_raw, now, registrar).errors)
    assert fields.received is not None
    key = f"paper:{registrar}:{idempotency_key}" if idempotency_key else None
    out = orders.submit(ad, dict(raw), fields.orderer or registrar, now, idempotency_key=key, channel="paper",
                        paper_received_on=_received_at(fields.received), paper_registered_by=registrar)
    if out.kind == "invalid":
        raise PaperInvalid(out.check.errors)
    if out.kind == "conflict":
        raise Conflict("idempotency key reused with another body")
    assert out.order is not None
    if out.kind == "created":
        with ad.db.session() as s:
            order = orders.get(s, out.order.reference)
            audit.record(s, actor=registrar, action="paper_registered", order=order, channel="paper", at=now,
                         detail={"received_on": fields.received.isoformat(), "signature_checked": True,
                                 "orderer": order.submitted_by, "continued": False})
        if out.order.urgent:  # as a digital urgent order: page before and regardless of the engine
            await asyncio.to_thread(paging.page_safely, ad, out.order.reference, now)
        await runs.start_run(ad, out.order.reference)
    return Registered(out.kind, out.order.reference, out.order.status, out.check.warnings)


async def _continue_paper(ad: Adapters, reference: str, registrar: str, received: date,
                          now: datetime) -> Registered:
    with ad.db.session() as s:
        order = orders.get(s, reference)
        if order.status != OrderStatus.PAPER_FALLBACK:
            raise Conflict(f"order is {order.status}, not paper_fallback")
        previous_channel = order.channel
        # From now on the signed paper form is the order's record: channel `paper`, and should the
        # execution system still be down, an account administrator executes it by hand (tasks/steps/stages.py).
        order.channel = "paper"
        order.paper_received_on = _received_at(received)
        order.paper_registered_by = registrar
        target = _back_to_digital(s, order, registrar, "paper_registered",
                                  {"received_on": received.isoformat(), "signature_checked": True,
                                   "continued": True, "previous_channel": previous_channel}, now)
        old_run = order.flow_run_id
    await _start_next_run(ad, reference, old_run)
    return Registered("continued", reference, target.value)


__all__ = ["NotFound", "PaperInvalid", "Probe", "Registered", "continue_digitally", "fallback_occasions",
           "register_paper_order", "resume_when_back", "status_before_fallback"]
