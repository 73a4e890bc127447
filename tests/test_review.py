"""Regular re-assessment with the time under test control: one reminder per review period; keep sets a new
date; restore starts a restore_access order. Runs on SQLite, and on PostgreSQL when DATABASE_URL is set."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from flows import review
from models import sla
from models.clock import FixedClock
from models.status import OrderStatus
from tasks.adapters import mail
from tasks.steps import monitoring
from tasks.steps.monitoring import ReviewRefused
from tasks.steps.orders import NotFound
from tests.monitoring_support import (
    HEAD,
    audit_rows,
    body,
    execute_at,
    order,
    outbox,
    patient,
    patient_orders,
    stockholm,
    submit_at,
)

pytestmark = pytest.mark.usefixtures("db")


@pytest.fixture(autouse=True)
def no_prefect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Starting a run is the launcher's business (tested elsewhere): record the call instead."""
    started: list[str] = []

    async def start_run(reference: str, *, restart: int = 0) -> str | None:
        started.append(reference)
        return None

    monkeypatch.setattr("tasks.steps.runs.start_run", start_run)
    return started


def executed(at: Any, pnr: str | None = None, **extra: Any) -> str:
    ref = submit_at(at, body(pnr or patient(), **extra))
    execute_at(at, ref)
    return ref


def outcome(reference: str, what: str, at: Any, actor: str = HEAD) -> monitoring.ReviewResult:
    return asyncio.run(review.record_outcome(reference, actor, what, at))


def test_an_executed_care_restriction_gets_a_review_date_from_the_region() -> None:
    at = stockholm(2022, 2, 1, 10, 0)
    ref = executed(at)
    assert order(ref).review_due_on == at + timedelta(days=365)
    own = submit_at(at, body(patient(), initiative="patient", actions=["lock_login"]))
    execute_at(at, own)
    assert order(own).review_due_on is None   # the patient's own wish: no re-assessment


def test_one_reminder_per_review_period() -> None:
    clock = FixedClock(stockholm(2022, 2, 1, 10, 0))
    ref = executed(clock.now())
    due = order(ref).review_due_on
    assert due is not None
    clock.set(due - timedelta(minutes=1))
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == []
    clock.set(due)
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == [ref]
    for step in (timedelta(minutes=5), timedelta(days=1), timedelta(days=60)):
        clock.advance(seconds=step.total_seconds())
        assert monitoring.send_review_reminders(clock.now(), references=[ref]) == []
    [m] = outbox(ref, "review")
    assert (m.event, m.recipient) == ("review-20230201", "demo-kalmar-head@kalmar.invalid")
    assert ref in m.subject and "omprövning" in m.subject.lower()
    assert "****" in m.body_text and "/omprovningar" in m.body_text and f"/bestallningar/{ref}" in m.body_text
    [row] = audit_rows(ref, "review_reminder")
    assert (row.actor, row.detail["period"]) == ("system", "20230201")


def test_keep_is_audited_and_sets_a_new_review_date_which_reminds_again() -> None:
    clock = FixedClock(stockholm(2022, 3, 1, 10, 0))
    ref = executed(clock.now())
    first = order(ref).review_due_on
    assert first is not None
    clock.set(first + timedelta(hours=2))
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == [ref]

    result = outcome(ref, "keep", clock.now())
    assert result.review_due_on == clock.now() + timedelta(days=365)
    assert order(ref).review_due_on == result.review_due_on
    [row] = audit_rows(ref, "review_kept")
    assert (row.actor, row.detail["outcome"], row.detail["period"]) == (HEAD, "keep", "20230301")
    with pytest.raises(ReviewRefused) as exc:   # a second click: the new period is not due
        outcome(ref, "keep", clock.now())
    assert (exc.value.status, exc.value.code) == (409, "review_not_due")

    clock.advance(days=30)
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == []
    clock.set(result.review_due_on)
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == [ref]
    assert sorted(m.event for m in outbox(ref, "review")) == ["review-20230301", "review-20240229"]  # 365 days: 2024 is a leap year
    assert patient_orders(order(ref).patient_pnr) == [ref]   # keep starts nothing


def test_restore_starts_a_restore_access_order_for_the_same_patient_and_actions(no_prefect: list[str]) -> None:
    clock = FixedClock(stockholm(2022, 4, 5, 10, 0))
    ref = executed(clock.now())
    original = order(ref)
    assert original.review_due_on is not None
    clock.set(original.review_due_on + timedelta(days=1))

    result = outcome(ref, "restore", clock.now())
    assert result.restore_reference is not None
    restore = order(result.restore_reference)
    assert (restore.order_type, restore.initiative, restore.patient_pnr, sorted(restore.actions), restore.status) == \
        ("restore_access", "care", original.patient_pnr, sorted(original.actions), OrderStatus.SUBMITTED)
    assert (restore.care_unit_hsa_id, restore.region) == (original.care_unit_hsa_id, original.region)
    assert no_prefect == [restore.reference]   # its flow run was started
    [row] = audit_rows(ref, "review_restore_ordered")
    assert (row.actor, row.detail["restore_reference"]) == (HEAD, restore.reference)
    [link] = audit_rows(restore.reference, "started_by_review")
    assert (link.actor, link.detail["review_of"]) == (HEAD, ref)
    with pytest.raises(ReviewRefused):
        outcome(ref, "restore", clock.now())
    assert sorted(patient_orders(original.patient_pnr)) == sorted([ref, restore.reference])

    # Once the restore order is executed the restriction is gone: no reminder at the next date.
    execute_at(clock.now(), restore.reference)
    next_due = order(ref).review_due_on
    assert next_due is not None
    clock.set(next_due)
    assert monitoring.send_review_reminders(clock.now(), references=[ref]) == []


def test_only_the_head_of_the_ordering_unit_records_the_outcome() -> None:
    clock = FixedClock(stockholm(2022, 5, 3, 10, 0))
    ref = executed(clock.now())
    due = order(ref).review_due_on
    assert due is not None
    clock.set(due + timedelta(hours=1))
    for actor in ("DEMO-JONKOPING-HEAD", "DEMO-KALMAR-CLINICIAN", "DEMO-ADMIN", "NOBODY"):
        with pytest.raises(ReviewRefused) as exc:
            outcome(ref, "keep", clock.now(), actor)
        assert exc.value.status == 403
    with pytest.raises(NotFound):
        outcome("RO-2022-999999", "keep", clock.now())
    with pytest.raises(ReviewRefused) as bad:
        outcome(ref, "forget", clock.now())
    assert bad.value.status == 422
    assert audit_rows(ref, "review_kept") == []


def test_no_outcome_before_the_review_date() -> None:
    clock = FixedClock(stockholm(2022, 5, 10, 10, 0))
    ref = executed(clock.now())
    clock.advance(days=364)
    with pytest.raises(ReviewRefused) as exc:
        outcome(ref, "keep", clock.now())
    assert (exc.value.status, exc.value.code) == (409, "review_not_due")


def test_a_guardian_block_is_kept_but_not_restored_by_a_restore_access_order() -> None:
    from tests.e2e import personal_number
    at = stockholm(2022, 6, 7, 10, 0)
    child = personal_number(stockholm(2016, 1, 20, 0, 0).date(), 118)
    guardian = personal_number(stockholm(1980, 3, 3, 0, 0).date(), 224)
    ref = submit_at(at, body(child, "block_guardian", guardian_personal_number=guardian))
    execute_at(at, ref)
    due = order(ref).review_due_on
    assert due is not None
    with pytest.raises(ReviewRefused) as exc:
        outcome(ref, "restore", due)
    assert (exc.value.status, exc.value.code) == (422, "restore_not_available")
    assert outcome(ref, "keep", due).outcome == "keep"


def test_review_period_keys() -> None:
    at = stockholm(2023, 3, 26, 1, 30)  # the night the clocks go forward
    assert sla.review_period(at) == "20230326"
    assert sla.review_event(at) == "review-20230326"
    assert sla.restriction_lifted(["seal_journal", "lock_login"], [["seal_journal"], ["lock_login"]])
    assert not sla.restriction_lifted(["seal_journal", "lock_login"], [["seal_journal"]])
    assert not sla.restriction_lifted([], [])


@pytest.mark.e2e
def test_the_daily_flow_reminds_once(prefect_server: str, smtp: Any) -> None:
    from flows.review import review_reminders
    from tests.e2e import wait_mails
    at = stockholm(2018, 10, 2, 10, 0)     # review due 2019-10-02: before any other test's review date
    ref = executed(at)
    due = order(ref).review_due_on
    assert due is not None
    # The completion confirmations were queued with the status; the routine (or housekeeping) sends them.
    mail.deliver(ref)
    wait_mails(smtp, ref, 2)
    assert review_reminders(now=due + timedelta(hours=1)) == {"reminded": 1, "sent": 1, "failed": 0}
    assert review_reminders(now=due + timedelta(days=1))["reminded"] == 0
    got = wait_mails(smtp, ref, 3)
    [m] = [m for m in got if ".review-" in str(m["Message-ID"])]
    assert str(m["To"]) == "demo-kalmar-head@kalmar.invalid"
