"""An order's life against the orders database, with the clock pinned and no Prefect server: the routine's
steps (tasks/steps/stages.py) called as the order flow calls them, with adapters of each test's own (a
FixedClock, the in-process events). What is in force after manual and simulated execution, re-validation
when the run receives the order, failures, the due time after a callback, review dates, emails for
protected patients, and the audit of reads by personal number.

Orders are stored at times in 2022, far from any other test's, and detached from any engine's runs
(tests/monitoring_support).
"""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from flows import urgent
from flows.bootstrap import in_process
from models.access import Restriction
from models.clock import FixedClock
from models.status import OrderStatus
from models.tables import AppliedEffect, AuditEvent, Deadline, OutboxMessage, RegistryPerson
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.gateway import ConfiguredGateway, access_state, known_access_state, record_effects
from tasks.adapters.settings import Settings
from tasks.steps import monitoring, orders, stages
from tests.conftest import prefect_headers
from tests.e2e import personal_number
from tests.monitoring_support import (
    CLINICIAN,
    audit_rows,
    body,
    detach,
    execute_at,
    order,
    outbox,
    patient,
    stockholm,
    submit_at,
)

ACCOUNTADMIN = "DEMO-KALMAR-ACCOUNTADMIN"
ONCALL = "DEMO-KALMAR-ONCALL"
TUESDAY = stockholm(2022, 5, 10, 10, 0)
SATURDAY = stockholm(2022, 5, 14, 11, 0)
PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(TUESDAY)


@pytest.fixture
def ad(settings: Settings, db: Database, clock: FixedClock) -> Adapters:
    """This module's adapters, one per test: the session's database, the test's clock, and the in-process
    events (`ad.events.sent`), which stand in for Prefect's event sender (test_order_failed_event_reaches_prefect
    sends the real one)."""
    return in_process(settings, db=db, clock=clock)


def failures(ad: Adapters) -> list[str]:
    """The orders an `order.failed` event was emitted for, in order."""
    return [e["resource"]["order.reference"] for e in ad.events.sent  # type: ignore[attr-defined]
            if e["event"] == stages.FAILED_EVENT]


def use_manual_gateway(ad: Adapters) -> None:
    """Execution by an account administrator in the 1177 tool (RO_GATEWAY=manual), from now on."""
    ad.gateway = ConfiguredGateway("manual", ad.settings.gateway_down_flag)


@pytest.fixture
def manual(ad: Adapters) -> None:
    use_manual_gateway(ad)


def digits(pnr: str) -> str:
    return pnr.replace("-", "")


def to_executing(ad: Adapters, reference: str, at: datetime) -> None:
    with ad.db.session() as s:
        o = orders.get(s, reference)
        for st in (OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL, OrderStatus.EXECUTING):
            orders.transition(s, o, st, actor="system", at=at)


def to_executing_from(ad: Adapters, reference: str, status: OrderStatus, at: datetime) -> None:
    with ad.db.session() as s:
        o = orders.get(s, reference)
        assert o.status == status
        for st in (OrderStatus.AWAITING_APPROVAL, OrderStatus.EXECUTING):
            orders.transition(s, o, st, actor="system", at=at)


def effects(ad: Adapters, reference: str) -> list[tuple[str, str, str]]:
    with ad.db.session() as s:
        return sorted((a.effect, a.target, a.system_reference) for a in s.scalars(
            select(AppliedEffect).where(AppliedEffect.order_reference == reference)))


def state(ad: Adapters, pnr: str, manual: bool = False) -> Any:
    with ad.db.session() as s:
        return known_access_state(s, digits(pnr), manual=manual)


def decide(ad: Adapters, reference: str, stage: str, actor: str, decision: dict[str, Any]) -> str:
    """A person's decision stored by the app, then taken by the order's run (the step the flow runs)."""
    _, d = orders.propose(ad, reference, stage, actor, decision)
    return stages.record_decision(ad, reference, stage, d.id)


def confirm_manually(ad: Adapters, reference: str, system_reference: str = "ADM-4711") -> str:
    assert stages.execute(ad, reference) == "manual"
    return decide(ad, reference, "execution", ACCOUNTADMIN, {"system_reference": system_reference})


def codes(ad: Adapters, raw: dict[str, Any], at: datetime) -> set[str]:
    return {e.code for e in orders.check(ad, raw, at, CLINICIAN).errors}


# --- item 1: manual execution keeps our record of what is in force -----------------------------------

def test_manual_execution_records_the_effects_like_the_simulated_registry(ad: Adapters, clock: FixedClock,
                                                                          manual: None) -> None:
    pnr = patient()
    ref = submit_at(ad, clock.now(), body(pnr, actions=["lock_login"]))
    to_executing(ad, ref, clock.now())
    assert state(ad, pnr, manual=True) is None  # never recorded: unknown with the manual gateway
    assert confirm_manually(ad, ref) == "completed"
    assert effects(ad, ref) == [("lock_login", "", "ADM-4711")]
    assert state(ad, pnr, manual=True) == state(ad, pnr) and state(ad, pnr).lock == Restriction("care", "kalmar", ref)
    with ad.db.session() as s:  # a second confirmation (a re-run) records nothing twice
        record_effects(s, orders.get(s, ref), "ADM-4711", clock.now(), strict=False)
    assert effects(ad, ref) == [("lock_login", "", "ADM-4711")]
    # The restore that used to be refused with nothing_to_restore now passes; the seal was never set.
    assert codes(ad, body(pnr, "restore_access", actions=["lock_login"]), clock.now()) == set()
    assert codes(ad, body(pnr, "restore_access", actions=["seal_journal"]), clock.now()) == {"nothing_to_restore"}
    restore = submit_at(ad, clock.advance(hours=1), body(pnr, "restore_access", actions=["lock_login"]))
    assert stages.receive(ad, restore) == "awaiting_assessment"
    to_executing_from(ad, restore, OrderStatus.AWAITING_ASSESSMENT, clock.now())
    assert confirm_manually(ad, restore, "ADM-4712") == "completed"
    assert state(ad, pnr, manual=True).lock is None


def test_a_person_never_recorded_has_unknown_access_with_the_manual_gateway(ad: Adapters,
                                                                               clock: FixedClock) -> None:
    pnr = patient()
    restore = body(pnr, "restore_access", actions=["seal_journal", "lock_login"], initiative="patient",
                   identity_checked_in_person=True)
    # Simulated registry: it knows everybody, so no row means nothing in force.
    assert codes(ad, restore, clock.now()) == {"nothing_to_restore"}
    use_manual_gateway(ad)
    # Manual: the seal may have been made before this system or in the 1177 tool; the administrator checks.
    assert codes(ad, restore, clock.now()) == set()
    ref = submit_at(ad, clock.now(), restore)
    assert stages.receive(ad, ref) == "awaiting_approval"  # still valid when the run receives it
    with ad.db.session() as s:
        o = orders.get(s, ref)
        orders.transition(s, o, OrderStatus.EXECUTING, actor="system", at=clock.now())
    # The administrator lifted it in the 1177 tool; our record had nothing to lift and stays empty.
    assert confirm_manually(ad, ref) == "completed"
    assert effects(ad, ref) == [("lift_seal", "", "ADM-4711"), ("unlock_login", "", "ADM-4711")]
    assert state(ad, pnr, manual=True) == state(ad, pnr) and state(ad, pnr).seal is None and state(ad, pnr).lock is None
    # Now we have a row: the rules check it, as with the simulated registry.
    assert codes(ad, restore, clock.now()) == {"nothing_to_restore"}


def restored_twice(ad: Adapters, clock: FixedClock, action: str) -> tuple[str, str]:
    """A restriction in force and two orders to restore it; the first executed, the second not yet."""
    pnr = patient()
    execute_at(ad, clock.now(), submit_at(ad, clock.now(), body(pnr, actions=[action])))
    first = submit_at(ad, clock.advance(minutes=5), body(pnr, "restore_access", actions=[action]))
    second = submit_at(ad, clock.advance(minutes=5), body(pnr, "restore_access", actions=[action]))
    execute_at(ad, clock.advance(minutes=5), first)
    return first, second


# --- item 3: a refused order is failed, loudly ------------------------------------------------------

def test_an_order_the_registry_refuses_fails_with_email_and_event(ad: Adapters, clock: FixedClock) -> None:
    first, second = restored_twice(ad, clock, "lock_login")
    to_executing(ad, second, clock.now())  # passed its checks before the first restore lifted the lock
    assert stages.execute(ad, second) == "failed"
    assert failures(ad) == [second]
    assert effects(ad, second) == []
    [row] = audit_rows(ad, second, "execution_refused")
    assert (row.to_status, row.detail) == ("failed", {"why": "no login lock in force"})
    mails = outbox(ad, second, "failed")
    assert sorted((m.recipient, m.message_id) for m in mails) == [
        ("demo-kalmar-clinician@kalmar.invalid", f"<{second}.failed.orderer@restriction-orders.invalid>"),
        ("supportcenter@kalmar.invalid", f"<{second}.failed.support@restriction-orders.invalid>")]
    for m in mails:
        assert m.subject == f"Beställning {second} kunde inte verkställas"
        for text in (m.body_text, m.body_html):
            assert "kunde inte verkställas" in text and "Misslyckad" in text and second in text
            assert "Hot mot patienten" not in text and "lock in force" not in text
    assert "supportkö" in next(m for m in mails if m.recipient.startswith("support")).body_text
    assert stages.execute(ad, second) == "failed" and failures(ad) == [second]  # a re-run does nothing again
    with ad.db.session() as s:
        assert orders.get(s, second).status == "failed"
        from tasks.steps import confirmations
        assert confirmations.queue(ad, s, orders.get(s, second)) == 0


def test_a_manual_confirmation_our_record_refuses_fails_too(ad: Adapters, clock: FixedClock, manual: None) -> None:
    # The lock is care's; a patient-initiated restore was made before we recorded it (the record changed
    # in between). The administrator's confirmation cannot make our record say a patient lifted it.
    pnr = patient()
    restore = submit_at(ad, clock.now(), body(pnr, "restore_access", actions=["lock_login"], initiative="patient"))
    lock = submit_at(ad, clock.advance(minutes=5), body(pnr, actions=["lock_login"]))
    to_executing(ad, lock, clock.now())
    assert confirm_manually(ad, lock, "ADM-1") == "completed"
    with ad.db.session() as s:
        orders.transition(s, orders.get(s, restore), OrderStatus.AWAITING_APPROVAL, actor="system", at=clock.now())
        orders.transition(s, orders.get(s, restore), OrderStatus.EXECUTING, actor="system", at=clock.now())
    assert confirm_manually(ad, restore, "ADM-2") == "failed"
    assert failures(ad) == [restore] and effects(ad, restore) == []
    assert state(ad, pnr).lock == Restriction("care", "kalmar", lock)
    assert len(outbox(ad, restore, "failed")) == 2


@pytest.mark.e2e
def test_order_failed_event_reaches_prefect(prefect_ad: Adapters, prefect_server: str) -> None:
    import time

    import httpx
    ref = "RO-2022-987654"
    stages.emit_failed(prefect_ad, ref)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not found:
        r = httpx.post(f"{prefect_server}/events/filter", timeout=10, headers=prefect_headers(), json={
            "filter": {"event": {"name": ["order.failed"]}, "resource": {"id": [f"order.{ref}"]}}, "limit": 5})
        r.raise_for_status()
        found = list(r.json()["events"])
        time.sleep(0.3)
    assert len(found) == 1
    assert found[0]["resource"] == {"prefect.resource.id": f"order.{ref}", "prefect.resource.name": ref,
                                    "order.reference": ref}
    assert found[0]["payload"] == {}


# --- item 4: protected identity: no masked number in any email ---------------------------------------

def test_emails_about_a_protected_patient_carry_no_masked_number(ad: Adapters, clock: FixedClock, smtp: Any) -> None:
    from tasks.steps import paging
    pnr = patient()
    protected = submit_at(ad, clock.now(), body(pnr, patient_protected_identity=True, urgent=True))
    plain = submit_at(ad, clock.now(), body(patient()))
    assert paging.page_order(ad, protected, clock.now()) is not None  # the urgent page is an email too
    for ref in (protected, plain):
        execute_at(ad, clock.now(), ref)
    hidden = outbox(ad, protected)
    assert {m.event for m in hidden} >= {"completed"} and len(hidden) >= 3
    for m in hidden:
        for text in (m.body_text, m.body_html, m.subject):
            assert pnr[:8] not in text and "****" not in text and not PNR_SHAPE.search(text)
        assert "Skyddade personuppgifter – hanteras per telefon" in m.body_text
        assert "Skyddade personuppgifter – hanteras per telefon" in m.body_html
    shown = outbox(ad, plain, "completed")
    assert shown and all("-****" in m.body_text and "Skyddade" not in m.body_text for m in shown)


# --- item 5: the run checks the order again when it receives it --------------------------------------

def test_a_child_who_turned_16_before_the_run_started_is_rejected(ad: Adapters, clock: FixedClock) -> None:
    sixteenth = (clock.now() + timedelta(days=2)).date()
    child = personal_number(date(sixteenth.year - 16, sixteenth.month, sixteenth.day), 482)
    ref = submit_at(ad, clock.now(), body(child, "minor_access", region="kalmar",
                                      minor_access={"grant": True, "recipient": "minor"}))
    clock.advance(days=3)  # the run starts late (the reconciler); the child is 16 now
    assert stages.receive(ad, ref) == "rejected"
    [row] = audit_rows(ad, ref, "validation_failed")
    assert (row.actor, row.from_status, row.to_status, row.detail) == \
        ("system", "submitted", "rejected", {"codes": ["not_aged_13_to_15"]})
    assert audit_rows(ad, ref, "validated") == [] and audit_rows(ad, ref, "stage_planned") == []
    [m] = outbox(ad, ref)
    assert (m.event, m.recipient) == ("rejected", "demo-kalmar-clinician@kalmar.invalid")
    assert "kontrollerades på nytt" in m.body_text and "kontrollerades på nytt" in m.body_html
    assert stages.receive(ad, ref) == "rejected"  # a re-run changes nothing
    assert len(audit_rows(ad, ref, "validation_failed")) == 1
    assert stages.stage_state(ad, ref, "callback").state == "closed"


def test_a_restore_with_nothing_left_to_restore_is_rejected_when_received(ad: Adapters, clock: FixedClock) -> None:
    first, second = restored_twice(ad, clock, "seal_journal")
    assert stages.receive(ad, second) == "rejected"
    assert audit_rows(ad, second, "validation_failed")[0].detail == {"codes": ["nothing_to_restore"]}


def test_every_valid_stored_order_passes_again(ad: Adapters, clock: FixedClock) -> None:
    child = personal_number(date(2008, 1, 15), 344)   # 14 on TUESDAY
    small = personal_number(date(2016, 2, 20), 512)   # 6
    guardian = personal_number(date(1979, 8, 3), 617)
    pnr = patient()
    execute_at(ad, clock.now(), submit_at(ad, clock.now(), body(pnr, initiative="patient", actions=["seal_journal"])))
    bodies = [
        body(patient(), patient_protected_identity=True, urgent=True, region="ostergotland"),
        body(pnr, "restore_access", actions=["seal_journal"], initiative="patient", identity_checked_in_person=True),
        body(small, "block_guardian", guardian_personal_number=guardian, region="jonkoping"),
        body(child, "minor_access", guardian_personal_number=guardian,
             minor_access={"grant": True, "recipient": "guardian", "child_consent": True}),
        body(child, "minor_access", minor_access={"grant": False, "recipient": "minor"}),
    ]
    refs = [submit_at(ad, clock.now(), b, actor=f"DEMO-{b['region'].upper()}-CLINICIAN") for b in bodies]
    out = orders.submit(ad, body(patient(), actions=["lock_login"]), CLINICIAN, clock.now(), channel="paper",
                        paper_received_on=clock.now() - timedelta(days=4), paper_registered_by="DEMO-KALMAR-SUPPORT")
    assert out.kind == "created" and out.order is not None
    detach(ad, out.order.reference)
    refs.append(out.order.reference)
    clock.advance(days=1)
    for ref in refs:
        assert stages.receive(ad, ref) in ("awaiting_callback", "awaiting_assessment", "awaiting_approval"), ref
        [row] = audit_rows(ad, ref, "validated")
        assert row.actor == "system" and set(row.detail) == {"warnings"}
    assert "protected_identity" in audit_rows(ad, refs[0], "validated")[0].detail["warnings"]
    assert "lock_without_seal" in audit_rows(ad, refs[-1], "validated")[0].detail["warnings"]


# --- item 6 (issue 13 item 2): an urgent order keeps its execution target after the callback ---------

def test_a_callback_in_time_keeps_the_urgent_execution_target(ad: Adapters, clock: FixedClock) -> None:
    clock.set(SATURDAY)
    ref = submit_at(ad, clock.now(), body(patient(), urgent=True))
    target = SATURDAY + timedelta(hours=4)  # the region's urgent_target_hours: never Monday's office end
    assert (order(ad, ref).due_at, order(ad, ref).callback_due_at) == (target, SATURDAY + timedelta(minutes=30))
    assert stages.receive(ad, ref) == "awaiting_callback"
    clock.advance(minutes=10)
    assert decide(ad, ref, "callback", ONCALL, {"note": ""}) == "awaiting_assessment"
    o = order(ad, ref)
    assert (o.due_at, o.callback_at) == (target, clock.now())
    assert audit_rows(ad, ref, "due_rescheduled") == []
    with ad.db.session() as s:
        rows = {d.kind: d for d in s.scalars(select(Deadline).where(Deadline.order_reference == ref))}
    assert rows["callback"].met_at == clock.now() and rows["due"].due_at == target and rows["due"].met_at is None
    for later in (timedelta(minutes=25), timedelta(hours=3)):  # past 30 minutes, before the target: not red
        assert not orders.overdue(o, clock.now() + later)
        assert monitoring.flag_overdue(ad, clock.now() + later, references=[ref]) == []
    assert [f.reference for f in monitoring.flag_overdue(ad, target + timedelta(minutes=1), references=[ref])] == [ref]


def test_an_order_made_urgent_later_gets_the_urgent_target(ad: Adapters, clock: FixedClock) -> None:
    ref = submit_at(ad, clock.now(), body(patient()))
    due = order(ad, ref).due_at
    assert stages.receive(ad, ref) == "awaiting_assessment"
    made = clock.advance(minutes=5)
    asyncio.run(urgent.start_urgent(ad, ref, ONCALL, made, start_run=False))
    target = made + timedelta(hours=4)
    assert due is not None and target < due and order(ad, ref).due_at == target
    out = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "", clock.advance(minutes=5)))
    assert (out.via, out.on_time) == ("stored", True)
    assert order(ad, ref).due_at == target and order(ad, ref).callback_at == clock.now()
    [row] = audit_rows(ad, ref, "due_rescheduled")
    assert (row.actor, row.detail["why"]) == (ONCALL, "made_urgent")


# --- item 7: review dates only for restrictions made on care's initiative ---------------------------

def test_only_executed_care_restrictions_get_a_review_date(ad: Adapters, clock: FixedClock) -> None:
    pnr, child, guardian = patient(), personal_number(date(2008, 3, 1), 356), personal_number(date(1980, 4, 4), 628)
    cases = {
        "seal_or_lock care": (body(pnr, actions=["lock_login"]), True),
        "block_guardian care": (body(child, "block_guardian", guardian_personal_number=personal_number(
            date(1981, 5, 5), 634)), True),
        "restore_access care": (body(pnr, "restore_access", actions=["lock_login"]), False),
        "minor_access grant": (body(child, "minor_access", guardian_personal_number=guardian,
                                    minor_access={"grant": True, "recipient": "guardian", "child_consent": True}),
                               False),
        "minor_access revoke": (body(child, "minor_access", guardian_personal_number=guardian,
                                     minor_access={"grant": False, "recipient": "guardian"}), False),
        "seal_or_lock patient": (body(patient(), initiative="patient", actions=["seal_journal"]), False),
    }
    for name, (b, reviewed) in cases.items():
        ref = submit_at(ad, clock.advance(minutes=1), b)
        execute_at(ad, clock.now(), ref)
        o = order(ad, ref)
        assert o.status == "completed", name
        assert (o.review_due_on == clock.now() + timedelta(days=365)) if reviewed else o.review_due_on is None, name


# --- item 8: the registry stores who set each guardian block and minor grant -------------------------

def test_guardian_blocks_and_grants_are_stored_with_their_origin(ad: Adapters, clock: FixedClock) -> None:
    child = personal_number(date(2008, 6, 6), 372)  # 13
    blocked, granted = personal_number(date(1978, 7, 7), 646), personal_number(date(1977, 8, 8), 652)
    block = submit_at(ad, clock.now(), body(child, "block_guardian", guardian_personal_number=blocked, region="stockholm"),
                      actor="DEMO-STOCKHOLM-CLINICIAN")
    grant = submit_at(ad, clock.now(), body(child, "minor_access", guardian_personal_number=granted,
                                        minor_access={"grant": True, "recipient": "guardian", "child_consent": True}))
    for ref in (block, grant):
        execute_at(ad, clock.now(), ref)
    with ad.db.session() as s:
        person = s.get(RegistryPerson, digits(child))
        assert person is not None
        assert person.blocked_guardians == [{"target": digits(blocked), "initiative": "care", "region": "stockholm",
                                             "order": block}]
        assert person.minor_access == [{"target": digits(granted), "initiative": "care", "region": "kalmar",
                                        "order": grant}]
        st = access_state(s, digits(child))
    assert st.blocked_guardians == frozenset({digits(blocked)}) and st.minor_access == frozenset({digits(granted)})
    assert st.guardian_blocks[digits(blocked)] == Restriction("care", "stockholm", block)
    assert st.minor_grants[digits(granted)] == Restriction("care", "kalmar", grant)


# --- item 9: reading access state by personal number is audited --------------------------------------

def test_reading_access_state_for_a_restore_is_an_audited_search(ad: Adapters, clock: FixedClock) -> None:
    pnr = patient()
    raw = body(pnr, "restore_access", actions=["lock_login"])

    def searches() -> list[AuditEvent]:
        with ad.db.session() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.patient_pnr == digits(pnr),
                                                           AuditEvent.action == "search_by_personal_number")
                                  .order_by(AuditEvent.id)))

    assert codes(ad, raw, clock.now()) == {"nothing_to_restore"}
    execute_at(ad, clock.now(), submit_at(ad, clock.now(), body(pnr, actions=["lock_login"])))  # no search: not a restore
    assert len(searches()) == 1
    assert orders.check(ad, raw, clock.advance(minutes=1), "DEMO-KALMAR-CLINICIAN2").ok
    ref = submit_at(ad, clock.advance(minutes=1), raw)
    assert stages.receive(ad, ref) == "awaiting_assessment"
    got = [(e.actor, e.order_reference, e.detail) for e in searches()]
    assert got == [(CLINICIAN, None, {"purpose": "validate", "known": True}),
                   ("DEMO-KALMAR-CLINICIAN2", None, {"purpose": "validate", "known": True}),
                   (CLINICIAN, None, {"purpose": "submit", "known": True}),
                   ("system", None, {"purpose": "revalidate", "known": True})]
    # The patient's log extract shows them.
    from tasks.steps import audit_extract
    extract = audit_extract.patient_extract(ad.db, "DEMO-ADMIN", pnr, clock.advance(minutes=1))
    assert sum(r.action == "search_by_personal_number" for r in extract.rows) == 5  # four plus the extract itself


def test_no_email_of_this_module_leaks(ad: Adapters, clock: FixedClock) -> None:
    # Everything the tests above queued: reference, type, unit, status and at most a masked number.
    with ad.db.session() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.created_at >= stockholm(2022, 1, 1),
                                                           OutboxMessage.created_at < stockholm(2023, 1, 1))))
    for m in rows:
        assert not PNR_SHAPE.search(m.body_text + m.body_html + m.subject), m.message_id
