"""The orders database: submit, references, idempotency, transitions, the append-only audit log,
the simulated 1177 registry and timezone-aware datetimes. Runs on SQLite, and on PostgreSQL when
DATABASE_URL is set.

The database is shared with the other test files of the session, so every test makes its own data
(fresh personal numbers, idempotency keys) and never assumes empty tables.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import Session

from models.access import Restriction
from models.clock import STOCKHOLM
from models.status import FINAL, IllegalTransition, OrderStatus, can_transition
from models.tables import AppliedEffect, AuditEvent, Deadline, Order, RegistryPerson
from tasks.adapters import Adapters
from tasks.adapters.gateway import ExecutionRefused, SimulatedRegistry, access_state
from tasks.steps import orders
from tests.test_rules import luhn

ACTOR = "DEMO-KALMAR-CLINICIAN"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=STOCKHOLM)          # Tuesday, office hours
SATURDAY = datetime(2026, 11, 28, 10, 0, tzinfo=STOCKHOLM)
REFERENCE = re.compile(r"^RO-(\d{4})-(\d{6})$")


# --- data made here -------------------------------------------------------------------------------------

_rng = random.Random(uuid.uuid4().int)
_days = itertools.count(_rng.randrange(0, 20000))


def number(born: date, *, ten: bool = False) -> str:
    """A personal number made here for the test (serials 980-999), never copied from anywhere."""
    serial = _rng.randrange(980, 1000)
    six = f"{born:%y%m%d}"
    check = luhn(f"{six}{serial}")
    return f"{six}-{serial}{check}" if ten else f"{born:%Y}{six[2:]}-{serial}{check}"


def adult(*, ten: bool = False) -> str:
    """A fresh adult (born 1930-1985), different on every call."""
    return number(date(1930, 1, 1) + timedelta(days=next(_days) % 20000), ten=ten)


def aged(years: int) -> str:
    """A fresh person who is `years` old on NOW's date (birthday 10-300 days ago)."""
    today = NOW.date()
    return number(today.replace(year=today.year - years) - timedelta(days=10 + next(_days) % 290))


def digits(pnr: str) -> str:
    return pnr.replace("-", "")


def body(order_type: str = "seal_or_lock", region: str = "kalmar", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "order_type": order_type, "initiative": "care", "patient_personal_number": adult(),
        "care_unit_hsa_id": f"DEMO-{region.upper()}-UNIT", "region": region, "reason": "Hot mot patienten",
        "urgent": False,
    }
    if order_type == "seal_or_lock":
        b["actions"] = ["seal_journal", "lock_login"]
    b.update(extra)
    return b


@pytest.fixture(autouse=True)
def own_orders(ad: Adapters) -> Iterator[list[str]]:
    """Orders made by these tests get a placeholder flow-run id as they are inserted, so a flow server of the
    same session (the e2e tests) never starts runs for them; they are closed again at the end of the test."""
    made: list[str] = []

    def mark(_mapper: Any, _conn: Any, target: Order) -> None:
        if target.flow_run_id is None:
            target.flow_run_id = str(uuid.uuid4())
        made.append(target.reference)

    event.listen(Order, "before_insert", mark)
    try:
        yield made
    finally:
        event.remove(Order, "before_insert", mark)
        with ad.db.session() as s:
            for ref in made:
                order = s.scalar(select(Order).where(Order.reference == ref))
                if order is None or OrderStatus(order.status) in FINAL:
                    continue
                for end in (OrderStatus.CANCELLED, OrderStatus.FAILED):
                    if can_transition(OrderStatus(order.status), end):
                        orders.transition(s, order, end, actor="test-teardown")
                        break


def submit(ad: Adapters, b: dict[str, Any], now: datetime = NOW, **kw: Any) -> orders.SubmitOutcome:
    # A clinician orders only for their own region's units (issue 16): another region's order by its clinician.
    region = str(b.get("region", "kalmar"))
    return orders.submit(ad, b, ACTOR if region == "kalmar" else f"DEMO-{region.upper()}-CLINICIAN", now, **kw)


def created(ad: Adapters, b: dict[str, Any], now: datetime = NOW, **kw: Any) -> Order:
    out = submit(ad, b, now, **kw)
    assert out.kind == "created", [e.model_dump() for e in out.check.errors]
    assert out.order is not None
    return out.order


def audit_rows(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def load(ad: Adapters, reference: str) -> Order:
    with ad.db.session() as s:
        return orders.get(s, reference)


def is_utc(at: datetime | None) -> bool:
    return at is not None and at.tzinfo is not None and at.utcoffset() == timedelta(0)


# --- submit -------------------------------------------------------------------------------------------------

def test_submit_stores_a_normalised_order_with_reference_due_time_and_audit(ad: Adapters) -> None:
    patient = adult(ten=True)
    out = submit(ad, body(patient_personal_number=patient, actions=["lock_login"]))
    assert out.kind == "created"
    assert out.order is not None
    assert [w.code for w in out.check.warnings] == ["lock_without_seal"]
    ref = out.order.reference
    m = REFERENCE.match(ref)
    assert m and m.group(1) == "2026"

    order = load(ad, ref)
    assert len(order.patient_pnr) == 12 and order.patient_pnr.isdigit()
    assert order.patient_pnr[2:] == digits(patient)
    assert order.status == "submitted"
    assert order.submitted_by == ACTOR
    assert order.order_type == "seal_or_lock" and order.actions == ["lock_login"]
    assert order.care_unit_hsa_id == "DEMO-KALMAR-UNIT" and order.region == "kalmar"
    assert order.flow_name == "seal-or-lock"
    assert order.created_at == NOW
    # In office hours: the same wall-clock time on the next working day.
    assert order.due_at == datetime(2026, 11, 25, 10, 0, tzinfo=STOCKHOLM)
    assert order.callback_due_at is None

    rows = audit_rows(ad, ref)
    assert [(e.action, e.actor, e.from_status, e.to_status) for e in rows] == [
        ("submitted", ACTOR, None, "submitted")]
    assert rows[0].patient_pnr == order.patient_pnr
    assert rows[0].detail == {"warnings": ["lock_without_seal"]}
    assert rows[0].at == NOW

    with ad.db.session() as s:
        kinds = {(d.kind, d.due_at) for d in s.scalars(select(Deadline).where(Deadline.order_reference == ref))}
    assert kinds == {("due", order.due_at)}


def test_submit_outside_office_hours_is_due_at_end_of_next_working_day(ad: Adapters) -> None:
    order = load(ad, created(ad, body(), SATURDAY).reference)
    assert order.due_at == datetime(2026, 11, 30, 16, 30, tzinfo=STOCKHOLM)
    assert audit_rows(ad, order.reference)[0].detail == {"warnings": ["outside_office_hours"]}


def test_urgent_submit_needs_a_callback_within_30_minutes(ad: Adapters) -> None:
    order = load(ad, created(ad, body(urgent=True), SATURDAY).reference)
    assert order.urgent is True
    assert order.callback_due_at == SATURDAY + timedelta(minutes=30)
    assert order.due_at == SATURDAY + timedelta(hours=4)  # the urgent execution target (issue 13)
    with ad.db.session() as s:
        kinds = sorted(d.kind for d in s.scalars(select(Deadline).where(Deadline.order_reference == order.reference)))
    assert kinds == ["callback", "due"]


def test_reference_year_is_the_stockholm_year(ad: Adapters) -> None:
    new_year = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)       # 00:30 on 1 January 2027 in Stockholm
    ref = created(ad, body(urgent=True), new_year).reference
    assert REFERENCE.match(ref) and ref.startswith("RO-2027-")


def test_references_are_unique_and_increasing(ad: Adapters) -> None:
    refs = [created(ad, body(), NOW + timedelta(seconds=i)).reference for i in range(20)]
    assert len(set(refs)) == 20
    numbers = []
    for ref in refs:
        m = REFERENCE.match(ref)
        assert m, ref
        assert m.group(1) == "2026"
        numbers.append(int(m.group(2)))
    assert numbers == sorted(numbers)
    assert all(b > a for a, b in itertools.pairwise(numbers))


def test_references_stay_unique_under_concurrent_submits(ad: Adapters) -> None:
    def one(i: int) -> str:
        return created(ad, body(), NOW + timedelta(seconds=i)).reference

    with ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(one, range(20)))
    assert len(set(refs)) == 20
    assert all(REFERENCE.match(r) for r in refs)


def _counts(ad: Adapters, pnr12: str) -> tuple[int, int, int, int]:
    with ad.db.session() as s:
        return (s.scalar(select(func.count()).select_from(Order)) or 0,
                s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
                s.scalar(select(func.count()).select_from(Order).where(Order.patient_pnr == pnr12)) or 0,
                s.scalar(select(func.count()).select_from(Deadline)) or 0)


def test_invalid_submit_stores_nothing(ad: Adapters) -> None:
    patient = adult()
    before = _counts(ad, digits(patient))
    out = submit(ad, body(patient_personal_number=patient, care_unit_hsa_id="SE-NO-SUCH-UNIT", reason="x" * 2001),
                 idempotency_key=f"k-{uuid.uuid4()}")
    assert out.kind == "invalid"
    assert out.order is None
    assert {(e.field, e.code) for e in out.check.errors} >= {
        ("care_unit_hsa_id", "unknown_care_unit"), ("reason", "reason_too_long")}
    assert _counts(ad, digits(patient)) == before


def test_submit_uses_the_registry_for_restore_rules(ad: Adapters) -> None:
    patient = adult()
    out = submit(ad, body("restore_access", patient_personal_number=patient, actions=["lock_login"]))
    assert out.kind == "invalid"
    assert ("actions", "nothing_to_restore") in {(e.field, e.code) for e in out.check.errors}

    sealed = created(ad, body(patient_personal_number=patient))            # care-initiated seal and lock
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, sealed.reference))
    out = submit(ad, body("restore_access", initiative="patient", patient_personal_number=patient,
                      actions=["lock_login"]))
    assert out.kind == "invalid"
    assert ("initiative", "care_initiated_restriction") in {(e.field, e.code) for e in out.check.errors}
    created(ad, body("restore_access", patient_personal_number=patient, actions=["lock_login"]))


# --- idempotency --------------------------------------------------------------------------------------------

def test_idempotency_key_replays_the_same_order(ad: Adapters) -> None:
    key = f"idem-{uuid.uuid4()}"
    b = body()
    first = created(ad, b, idempotency_key=key)
    again = submit(ad, dict(reversed(list(b.items()))), NOW + timedelta(minutes=5), idempotency_key=key)
    assert again.kind == "replayed"
    assert again.order is not None
    assert again.order.reference == first.reference
    assert again.order.id == first.id
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Order).where(Order.idempotency_key == key)) == 1
    assert len(audit_rows(ad, first.reference)) == 1


def test_idempotency_key_with_another_body_conflicts(ad: Adapters) -> None:
    key = f"idem-{uuid.uuid4()}"
    b = body()
    first = created(ad, b, idempotency_key=key)
    other = submit(ad, {**b, "urgent": True}, idempotency_key=key)
    assert other.kind == "conflict"
    assert other.order is not None and other.order.reference == first.reference
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Order).where(Order.idempotency_key == key)) == 1
        assert s.scalar(select(func.count()).select_from(Order)
                        .where(Order.patient_pnr == digits(b["patient_personal_number"]))) == 1


def test_concurrent_submits_with_one_key_store_one_order(ad: Adapters) -> None:
    """A double click: the requests race; one stores the order, the others are replayed. The service layer
    lets the loser see the unique-key violation (forms/api.py catches it and asks again, which replays)."""
    key = f"idem-{uuid.uuid4()}"
    b = body()
    start = threading.Barrier(4)

    def one(_: int) -> str:
        start.wait()
        try:
            return submit(ad, b, idempotency_key=key).kind
        except IntegrityError:
            again = submit(ad, b, idempotency_key=key)
            return again.kind

    with ThreadPoolExecutor(4) as pool:
        kinds = sorted(pool.map(one, range(4)))
    assert kinds == ["created", "replayed", "replayed", "replayed"]
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Order).where(Order.idempotency_key == key)) == 1


def test_different_keys_make_different_orders(ad: Adapters) -> None:
    b = body()
    one = created(ad, b, idempotency_key=f"idem-{uuid.uuid4()}")
    two = created(ad, b, idempotency_key=f"idem-{uuid.uuid4()}")
    assert one.reference != two.reference


# --- transitions and the audit log ----------------------------------------------------------------------------

def test_transitions_write_audit_rows_with_from_to_and_actor(ad: Adapters) -> None:
    ref = created(ad, body()).reference
    steps = [(OrderStatus.AWAITING_ASSESSMENT, "system"), (OrderStatus.AWAITING_APPROVAL, "DEMO-KALMAR-ASSESSOR"),
             (OrderStatus.EXECUTING, "DEMO-KALMAR-HEAD"), (OrderStatus.COMPLETED, "DEMO-KALMAR-ACCOUNTADMIN")]
    at = NOW
    for to, actor in steps:
        at += timedelta(minutes=10)
        with ad.db.session() as s:
            orders.transition(s, orders.get(s, ref), to, actor=actor, detail={"step": str(to)}, at=at)
    order = load(ad, ref)
    assert order.status == "completed"
    assert order.updated_at == at

    rows = [(e.actor, e.from_status, e.to_status) for e in audit_rows(ad, ref)]
    assert rows == [(ACTOR, None, "submitted"),
                    ("system", "submitted", "awaiting_assessment"),
                    ("DEMO-KALMAR-ASSESSOR", "awaiting_assessment", "awaiting_approval"),
                    ("DEMO-KALMAR-HEAD", "awaiting_approval", "executing"),
                    ("DEMO-KALMAR-ACCOUNTADMIN", "executing", "completed")]
    with ad.db.session() as s:
        hist = orders.history(s, orders.get(s, ref))
    assert [(h.actor, h.from_, h.to) for h in hist] == rows


def test_transition_to_the_same_status_writes_nothing(ad: Adapters) -> None:
    ref = created(ad, body()).reference
    with ad.db.session() as s:
        orders.transition(s, orders.get(s, ref), OrderStatus.SUBMITTED, actor="system")
    assert len(audit_rows(ad, ref)) == 1


@pytest.mark.parametrize("to", [OrderStatus.EXECUTING, OrderStatus.COMPLETED, "no_such_status"])
def test_illegal_transition_raises_and_changes_nothing(ad: Adapters, to: str) -> None:
    ref = created(ad, body()).reference
    with pytest.raises((IllegalTransition, ValueError)), ad.db.session() as s:
        orders.transition(s, orders.get(s, ref), to, actor="system")
    assert load(ad, ref).status == "submitted"
    assert len(audit_rows(ad, ref)) == 1


def test_cancel_by_submitter_only_before_execution(ad: Adapters) -> None:
    ref = created(ad, body()).reference
    with pytest.raises(orders.Forbidden):
        orders.cancel(ad, ref, "DEMO-KALMAR-CLINICIAN2", "nej")
    orders.cancel(ad, ref, ACTOR, "Fel patient", now=NOW + timedelta(minutes=1))
    assert load(ad, ref).status == "cancelled"
    last = audit_rows(ad, ref)[-1]
    assert (last.action, last.actor, last.from_status, last.to_status) == ("cancelled", ACTOR, "submitted",
                                                                           "cancelled")
    with pytest.raises(orders.Conflict):
        orders.cancel(ad, ref, ACTOR, "igen")

    ref2 = created(ad, body()).reference
    with ad.db.session() as s:
        o = orders.get(s, ref2)
        for to in (OrderStatus.AWAITING_APPROVAL, OrderStatus.EXECUTING):
            orders.transition(s, o, to, actor="system")
    with pytest.raises(orders.Conflict):
        orders.cancel(ad, ref2, "DEMO-ADMIN", "för sent")
    assert load(ad, ref2).status == "executing"


# --- the audit log is append-only ----------------------------------------------------------------------------

def _audit_snapshot(ad: Adapters, event_id: int) -> tuple[Any, ...] | None:
    with ad.db.engine.connect() as c:
        row = c.execute(text("SELECT actor, action, to_status, order_reference FROM audit_log WHERE id = :i"),
                        {"i": event_id}).first()
    return tuple(row) if row else None


def _audit_count(ad: Adapters) -> int:
    with ad.db.session() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent)) or 0


ATTEMPTS = {
    "orm update": lambda s, i: s.execute(update(AuditEvent).where(AuditEvent.id == i).values(actor="forger")),
    "orm bulk update": lambda s, i: s.execute(update(AuditEvent).values(to_status="completed")),
    "orm delete": lambda s, i: s.execute(delete(AuditEvent).where(AuditEvent.id == i)),
    "orm delete all": lambda s, i: s.execute(delete(AuditEvent)),
    "raw update": lambda s, i: s.execute(text("UPDATE audit_log SET actor = 'forger' WHERE id = :i"), {"i": i}),
    "raw delete": lambda s, i: s.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": i}),
    "raw delete all": lambda s, i: s.execute(text("DELETE FROM audit_log")),
}


def _change_attribute(s: Session, i: int) -> None:
    ev = s.get(AuditEvent, i)
    ev.actor = "forger"
    s.flush()


def _delete_object(s: Session, i: int) -> None:
    s.delete(s.get(AuditEvent, i))
    s.flush()


ATTEMPTS["orm object changed"] = _change_attribute
ATTEMPTS["orm object deleted"] = _delete_object


@pytest.mark.parametrize("attempt", list(ATTEMPTS), ids=list(ATTEMPTS))
def test_audit_log_is_append_only(ad: Adapters, attempt: str) -> None:
    ref = created(ad, body()).reference
    event_id = audit_rows(ad, ref)[0].id
    before, count = _audit_snapshot(ad, event_id), _audit_count(ad)
    assert before == (ACTOR, "submitted", "submitted", ref)
    # Never committed: if the database let a change through, it is rolled back before anyone else sees it.
    s = Session(ad.db.engine)
    try:
        with pytest.raises(DBAPIError):
            ATTEMPTS[attempt](s, event_id)
    finally:
        s.rollback()
        s.close()
    assert _audit_snapshot(ad, event_id) == before
    assert _audit_count(ad) == count


def test_audit_log_refuses_changes_on_a_plain_connection(ad: Adapters) -> None:
    ref = created(ad, body()).reference
    event_id = audit_rows(ad, ref)[0].id
    before = _audit_snapshot(ad, event_id)
    eng = ad.db.engine
    statements = ["UPDATE audit_log SET detail = NULL", "DELETE FROM audit_log WHERE id = :i"]
    if eng.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_log")
    for sql in statements:
        with eng.connect() as c:
            try:
                with pytest.raises(DBAPIError):
                    c.execute(text(sql), {"i": event_id})
            finally:
                c.rollback()
        assert _audit_snapshot(ad, event_id) == before, sql


def test_audit_log_still_accepts_inserts(ad: Adapters) -> None:
    ref = created(ad, body()).reference
    with ad.db.session() as s:
        o = orders.get(s, ref)
        orders.transition(s, o, OrderStatus.AWAITING_ASSESSMENT, actor="system")
    assert [e.to_status for e in audit_rows(ad, ref)] == ["submitted", "awaiting_assessment"]


# --- the simulated 1177 registry ----------------------------------------------------------------------------

def _effects(ad: Adapters, reference: str) -> list[tuple[str, str]]:
    with ad.db.session() as s:
        return sorted((a.effect, a.target) for a in s.scalars(
            select(AppliedEffect).where(AppliedEffect.order_reference == reference)))


def test_registry_applies_effects_once(ad: Adapters) -> None:
    order = created(ad, body(region="stockholm"))
    results = []
    for _ in range(2):
        with ad.db.session() as s:
            results.append(SimulatedRegistry().apply(s, orders.get(s, order.reference)))
    assert results == [f"SIM-{order.reference}"] * 2
    assert _effects(ad, order.reference) == [("lock_login", ""), ("seal_journal", "")]
    with ad.db.session() as s:
        state = access_state(s, order.patient_pnr)
        person = s.get(RegistryPerson, order.patient_pnr)
        assert person is not None
        assert (person.sealed_by_initiative, person.sealed_by_region) == ("care", "stockholm")
        assert (person.locked_by_initiative, person.locked_by_region) == ("care", "stockholm")
    assert state.seal == Restriction("care", "stockholm", order.reference)
    assert state.lock == Restriction("care", "stockholm", order.reference)


def test_registry_records_patient_initiative(ad: Adapters) -> None:
    order = created(ad, body(initiative="patient", actions=["seal_journal"], region="jonkoping"))
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, order.reference))
        state = access_state(s, order.patient_pnr)
    assert state.seal == Restriction("patient", "jonkoping", order.reference)
    assert state.lock is None


def test_registry_retry_after_a_later_order_changes_nothing(ad: Adapters) -> None:
    patient = adult()
    seal = created(ad, body(patient_personal_number=patient, actions=["seal_journal"]))
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, seal.reference))
    lift = created(ad, body("restore_access", patient_personal_number=patient, actions=["seal_journal"]))
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, lift.reference))
    with ad.db.session() as s:      # a retried execution of the first order must not seal again
        SimulatedRegistry().apply(s, orders.get(s, seal.reference))
        state = access_state(s, digits(patient))
    assert state.seal is None
    assert _effects(ad, seal.reference) == [("seal_journal", "")]
    assert _effects(ad, lift.reference) == [("lift_seal", "")]


def test_registry_refuses_minor_access_for_a_blocked_guardian(ad: Adapters) -> None:
    child, guardian = aged(14), adult()
    block = created(ad, body("block_guardian", patient_personal_number=child, guardian_personal_number=guardian))
    for _ in range(2):
        with ad.db.session() as s:
            SimulatedRegistry().apply(s, orders.get(s, block.reference))
    assert _effects(ad, block.reference) == [("block_guardian", digits(guardian))]

    grant = created(ad, body("minor_access", patient_personal_number=child, guardian_personal_number=guardian,
                         minor_access={"grant": True, "recipient": "guardian", "child_consent": True}))
    with pytest.raises(ExecutionRefused), ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, grant.reference))
    assert _effects(ad, grant.reference) == []
    with ad.db.session() as s:
        state = access_state(s, digits(child))
    assert state.blocked_guardians == frozenset({digits(guardian)})
    assert state.minor_access == frozenset()

    # The child's own access is not affected by the guardian's block.
    own = created(ad, body("minor_access", patient_personal_number=child,
                       minor_access={"grant": True, "recipient": "minor"}))
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, own.reference))
        assert access_state(s, digits(child)).minor_access == frozenset({"minor"})


# --- datetimes -----------------------------------------------------------------------------------------------

def test_datetimes_come_back_timezone_aware_utc(ad: Adapters) -> None:
    order = created(ad, body(urgent=True), SATURDAY)
    with ad.db.session() as s:
        SimulatedRegistry().apply(s, orders.get(s, order.reference))
    with ad.db.session() as s:
        o = orders.get(s, order.reference)
        for at in (o.created_at, o.updated_at, o.due_at, o.callback_due_at):
            assert is_utc(at), at
        assert o.created_at == SATURDAY
        assert o.created_at.hour == 9                      # 10:00 CET is 09:00 UTC
        for e in s.scalars(select(AuditEvent).where(AuditEvent.order_reference == order.reference)):
            assert is_utc(e.at)
        for a in s.scalars(select(AppliedEffect).where(AppliedEffect.order_reference == order.reference)):
            assert is_utc(a.at)
        for d in s.scalars(select(Deadline).where(Deadline.order_reference == order.reference)):
            assert is_utc(d.due_at)


def test_naive_datetimes_are_refused(ad: Adapters) -> None:
    with pytest.raises(StatementError), ad.db.session() as s:
        s.add(AuditEvent(at=datetime(2026, 11, 24, 10, 0), actor="test", action="naive",
                         detail={}))
        s.flush()
    with pytest.raises(ValueError):
        orders.submit(ad, body(), ACTOR, datetime(2026, 11, 24, 10, 0))
