"""The patient log extract and sample checks, and the audit log's immutability through the application.

Runs on SQLite, and on PostgreSQL when DATABASE_URL is set (the append-only triggers differ per database).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError

from forms.actions import read_order_row
from forms.auth import User
from models import personnummer
from models.clock import FixedClock
from models.tables import AuditEvent, Staff
from tasks.adapters import Adapters, audit
from tasks.steps import audit_extract, orders
from tests.monitoring_support import (
    ADMIN,
    CLINICIAN,
    audit_rows,
    body,
    execute_at,
    patient,
    stockholm,
    submit_at,
)


def user(ad: Adapters, hsa_id: str) -> User:
    with ad.db.session() as s:
        p = s.get(Staff, hsa_id)
        assert p is not None
        return User(p.hsa_id, p.name, tuple(p.roles), p.unit_hsa_id, p.region, "header")


def digits(pnr: str) -> str:
    return pnr.replace("-", "")


def search_rows(ad: Adapters, pnr12: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "search_by_personal_number",
                                                       AuditEvent.patient_pnr == pnr12)))


def test_the_extract_lists_exactly_the_patients_events(ad: Adapters) -> None:
    clock = FixedClock(stockholm(2022, 9, 6, 10, 0))
    a, b = patient(), patient()
    a1 = submit_at(ad, clock.now(), body(a))
    execute_at(ad, clock.advance(hours=1), a1)
    a2 = submit_at(ad, clock.advance(hours=1), body(a, actions=["lock_login"]))
    orders.cancel(ad, a2, CLINICIAN, "fel patient", now=clock.advance(minutes=5))
    b1 = submit_at(ad, clock.now(), body(b))
    read_order_row(ad, user(ad, "DEMO-KALMAR-SUPPORT"), a1, "page")        # a read of A's order
    read_order_row(ad, user(ad, "DEMO-KALMAR-SUPPORT"), b1, "page")        # and of B's
    audit_extract.patient_extract(ad.db, ADMIN, b, clock.advance(minutes=1))   # somebody searched for B

    extract = audit_extract.patient_extract(ad.db, ADMIN, a, clock.advance(minutes=1))

    expected = {e.id for e in audit_rows(ad, a1)} | {e.id for e in audit_rows(ad, a2)} | {e.id for e in search_rows(ad, digits(a))}
    assert {r.id for r in extract.rows} == expected
    assert sorted(extract.orders) == sorted([a1, a2])
    assert all(r.order_reference in (a1, a2, None) for r in extract.rows)
    assert b1 not in {r.order_reference for r in extract.rows}
    assert extract.patient_masked == personnummer.mask(digits(a))
    # who, what, when: the read by support, the cancellation by the clinician, and this very search
    read = next(r for r in extract.rows if r.action == "order_read")
    assert (read.actor, read.actor_name, read.action_label, read.order_reference) == \
        ("DEMO-KALMAR-SUPPORT", "Supporten (Region Kalmar län)", "Läste beställningen", a1)
    assert read.actor_unit == "Demoenheten Region Kalmar län"
    assert any(r.action == "cancelled" and r.actor == CLINICIAN for r in extract.rows)
    [search] = [r for r in extract.rows if r.action == "search_by_personal_number"]
    assert (search.actor, search.at, search.order_reference) == (ADMIN, clock.now(), None)
    assert [r.at for r in extract.rows] == sorted(r.at for r in extract.rows)
    # the JSON form names the patient only masked
    as_json = str(extract.as_json())
    assert digits(a) not in as_json and a not in as_json and digits(a)[:8] + "-****" in as_json


def test_the_extract_accepts_ten_digits_and_logs_each_search(ad: Adapters) -> None:
    at = stockholm(2022, 9, 13, 10, 0)
    pnr = patient()
    ref = submit_at(ad, at, body(pnr))
    ten = pnr[2:]                       # YYMMDD-NNNC
    first = audit_extract.patient_extract(ad.db, ADMIN, ten, at)
    second = audit_extract.patient_extract(ad.db, ADMIN, digits(pnr), at + timedelta(minutes=1))
    assert first.orders == second.orders == [ref]
    assert len(search_rows(ad, digits(pnr))) == 2
    assert len(second.rows) == len(first.rows) + 1


def test_an_invalid_number_is_refused_and_nothing_is_logged(ad: Adapters) -> None:
    with ad.db.session() as s:
        before = s.scalar(select(func.count()).select_from(AuditEvent))
    for bad in ("19121212-1213", "hello", "", "20991212-1210"):
        with pytest.raises(personnummer.InvalidPersonalNumber):
            audit_extract.patient_extract(ad.db, ADMIN, bad, datetime.now(UTC))
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == before


ATTEMPTS = ["attribute", "orm delete", "bulk update", "bulk delete"]


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_audit_rows_cannot_be_updated_or_deleted_through_the_application(ad: Adapters, attempt: str) -> None:
    ref = submit_at(ad, stockholm(2022, 9, 20, 10, 0), body(patient()))
    row = audit_rows(ad, ref)[0]
    with ad.db.session() as s:
        total = s.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(DBAPIError), ad.db.session() as s:
        ev = s.get(AuditEvent, row.id)
        assert ev is not None
        if attempt == "attribute":
            ev.actor = "forger"
        elif attempt == "orm delete":
            s.delete(ev)
        elif attempt == "bulk update":
            s.execute(update(AuditEvent).where(AuditEvent.order_reference == ref).values(to_status="completed"))
        else:
            s.execute(delete(AuditEvent).where(AuditEvent.order_reference == ref))
        s.flush()
    after = audit_rows(ad, ref)[0]
    assert (after.actor, after.to_status, after.action) == (row.actor, row.to_status, row.action)
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == total


def test_sample_check_flags_refused_and_cross_region_reads_and_is_logged(ad: Adapters) -> None:
    now = datetime.now(UTC)
    ref = submit_at(ad, now - timedelta(hours=2), body(patient()))
    read_order_row(ad, user(ad, "DEMO-KALMAR-SUPPORT"), ref, "page")
    with pytest.raises(Exception):  # noqa: B017 - NotAllowed: another region's support may not read it
        read_order_row(ad, user(ad, "DEMO-JONKOPING-SUPPORT"), ref, "page")
    with ad.db.session() as s:
        order = orders.get(s, ref)
        # e.g. a person who has moved to another region since: the read was allowed, but is worth a look
        audit.record(s, actor="DEMO-STOCKHOLM-ASSESSOR", action="order_read", order=order, at=now,
                     detail={"via": "page"})
    refused = audit_rows(ad, ref, "order_read_refused")[0].id
    cross = audit_rows(ad, ref, "order_read")[-1].id

    check = audit_extract.sample_check(ad.db, ADMIN, now + timedelta(seconds=1), days=1, size=2, seed=42)
    assert len(check.sampled) == min(2, check.population)
    flagged = {r.id: why for r, why in check.flagged}
    assert flagged[refused] == "refused" and flagged[cross] == "other_region"
    again = audit_extract.sample_check(ad.db, ADMIN, now + timedelta(seconds=1), days=1, size=2, seed=42)
    assert [r.id for r in again.sampled] == [r.id for r in check.sampled]   # the seed repeats the draw
    with ad.db.session() as s:
        logged = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "sample_check",
                                                         AuditEvent.actor == ADMIN).order_by(AuditEvent.id)))
    assert logged[-1].detail["seed"] == 42 and refused in logged[-1].detail["flagged_ids"]
    assert logged[-1].patient_pnr is None
