"""Regular re-assessment with the time under test control: one reminder per review period; keep sets a new
date; restore starts a restore_access order. Runs on SQLite, and on PostgreSQL when DATABASE_URL is set.

Each test builds its own adapters with a FixedClock and the in-process engine (flows/inprocess.py), so an
order a review starts gets its run at the test's time, without a Prefect server. Orders are stored at times
in 2018-2023, far from any other test's, each with a patient of its own.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from flows import commands, review
from flows.bootstrap import in_process
from flows.inprocess import InProcessEngine
from models import sla
from models.clock import STOCKHOLM, FixedClock
from models.status import OrderStatus
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import monitoring
from tasks.steps.monitoring import ReviewRefused
from tasks.steps.orders import NotFound
from tests.e2e import personal_number
from tests.monitoring_support import audit_rows, execute_at, order, outbox, patient_orders, submit_at

CLINICIAN, ASSESSOR, HEAD = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-ASSESSOR", "DEMO-KALMAR-HEAD"
_rng = random.Random(uuid.uuid4().int)


def stockholm(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=STOCKHOLM)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(stockholm(2022, 1, 3, 10, 0))


@pytest.fixture
def ad(settings: Settings, db: Database, clock: FixedClock) -> Adapters:
    """The session's database and SMTP server, this test's clock, the in-process engine."""
    return in_process(settings, db=db, clock=clock)


def patient() -> str:
    """A fresh adult's personal number (born 1940-1989), made here and never copied from anywhere."""
    born = date(1940, 1, 1) + timedelta(days=_rng.randrange(0, 18000))
    return personal_number(born, _rng.randrange(100, 980))


def body(pnr: str, order_type: str = "seal_or_lock", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"order_type": order_type, "initiative": "care", "patient_personal_number": pnr,
                         "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar", "reason": "Hot mot patienten"}
    if order_type in ("seal_or_lock", "restore_access"):
        b["actions"] = ["seal_journal", "lock_login"]
    b.update(extra)
    return b


def executed(ad: Adapters, at: datetime, pnr: str | None = None, **extra: Any) -> str:
    ref = submit_at(ad, at, body(pnr or patient(), **extra))
    execute_at(ad, at, ref)
    return ref


def outcome(ad: Adapters, reference: str, what: str, at: datetime, actor: str = HEAD) -> monitoring.ReviewResult:
    return asyncio.run(review.record_outcome(ad, reference, actor, what, at))


def reminders(ad: Adapters, at: datetime, ref: str) -> list[str]:
    return monitoring.send_review_reminders(ad, at, references=[ref])


def executed_and_due(ad: Adapters, clock: FixedClock, after: timedelta) -> str:
    """An executed care restriction, with the clock set `after` its review date."""
    ref = executed(ad, clock.now())
    due = order(ad, ref).review_due_on
    assert due is not None
    clock.set(due + after)
    return ref


def test_an_executed_care_restriction_gets_a_review_date_from_the_region(ad: Adapters) -> None:
    at = stockholm(2022, 2, 1, 10, 0)
    ref = executed(ad, at)
    assert order(ad, ref).review_due_on == at + timedelta(days=365)
    own = submit_at(ad, at, body(patient(), initiative="patient", actions=["lock_login"]))
    execute_at(ad, at, own)
    assert order(ad, own).review_due_on is None   # the patient's own wish: no re-assessment


def test_one_reminder_per_review_period(ad: Adapters, clock: FixedClock) -> None:
    clock.set(stockholm(2022, 2, 1, 10, 0))
    ref = executed_and_due(ad, clock, -timedelta(minutes=1))
    assert reminders(ad, clock.now(), ref) == []
    clock.advance(minutes=1)
    assert reminders(ad, clock.now(), ref) == [ref]
    for step in (timedelta(minutes=5), timedelta(days=1), timedelta(days=60)):
        clock.advance(seconds=step.total_seconds())
        assert reminders(ad, clock.now(), ref) == []
    [m] = outbox(ad, ref, "review")
    assert (m.event, m.recipient) == ("review-20230201", "demo-kalmar-head@kalmar.invalid")
    assert ref in m.subject and "omprövning" in m.subject.lower()
    assert "****" in m.body_text and "/omprovningar" in m.body_text and f"/bestallningar/{ref}" in m.body_text
    [row] = audit_rows(ad, ref, "review_reminder")
    assert (row.actor, row.detail["period"]) == ("system", "20230201")


def test_keep_is_audited_and_sets_a_new_review_date_which_reminds_again(ad: Adapters, clock: FixedClock) -> None:
    clock.set(stockholm(2022, 3, 1, 10, 0))
    ref = executed_and_due(ad, clock, timedelta(hours=2))
    assert reminders(ad, clock.now(), ref) == [ref]

    result = outcome(ad, ref, "keep", clock.now())
    assert result.review_due_on == clock.now() + timedelta(days=365)
    assert order(ad, ref).review_due_on == result.review_due_on
    [row] = audit_rows(ad, ref, "review_kept")
    assert (row.actor, row.detail["outcome"], row.detail["period"]) == (HEAD, "keep", "20230301")
    with pytest.raises(ReviewRefused) as exc:   # a second click: the new period is not due
        outcome(ad, ref, "keep", clock.now())
    assert (exc.value.status, exc.value.code) == (409, "review_not_due")

    clock.advance(days=30)
    assert reminders(ad, clock.now(), ref) == []
    clock.set(result.review_due_on)
    assert reminders(ad, clock.now(), ref) == [ref]
    assert sorted(m.event for m in outbox(ad, ref, "review")) == ["review-20230301", "review-20240229"]  # 365 days: 2024 is a leap year
    assert patient_orders(ad, order(ad, ref).patient_pnr) == [ref]   # keep starts nothing


def test_restore_starts_a_restore_access_order_for_the_same_patient_and_actions(ad: Adapters,
                                                                                 clock: FixedClock) -> None:
    clock.set(stockholm(2022, 4, 5, 10, 0))
    ref = executed(ad, clock.now())
    original = order(ad, ref)
    assert original.review_due_on is not None
    clock.set(original.review_due_on + timedelta(days=1))

    result = outcome(ad, ref, "restore", clock.now())
    assert result.restore_reference is not None
    restore = order(ad, result.restore_reference)
    assert (restore.order_type, restore.initiative, restore.patient_pnr, sorted(restore.actions)) == \
        ("restore_access", "care", original.patient_pnr, sorted(original.actions))
    assert (restore.care_unit_hsa_id, restore.region) == (original.care_unit_hsa_id, original.region)
    # Its run was started, and went as far as it could: to the harm assessment (care's initiative).
    assert isinstance(ad.engine, InProcessEngine)
    run = ad.engine.run_of(restore.reference)
    assert run is not None and restore.flow_run_id == run.id
    assert (run.flow_name, run.state, run.waiting_key) == ("restore-access", "paused", "harm-assessment-0")
    assert restore.status == OrderStatus.AWAITING_ASSESSMENT
    [row] = audit_rows(ad, ref, "review_restore_ordered")
    assert (row.actor, row.detail["restore_reference"]) == (HEAD, restore.reference)
    [link] = audit_rows(ad, restore.reference, "started_by_review")
    assert (link.actor, link.detail["review_of"]) == (HEAD, ref)
    with pytest.raises(ReviewRefused):
        outcome(ad, ref, "restore", clock.now())
    assert sorted(patient_orders(ad, original.patient_pnr)) == sorted([ref, restore.reference])

    # Once the restore order is executed the restriction is gone: no reminder at the next date.
    asyncio.run(commands.decide(ad, restore.reference, "harm_assessment", ASSESSOR,
                                {"harm_found": False, "decision": "restrict", "rationale": "Begränsningen hävs"}))
    asyncio.run(commands.decide(ad, restore.reference, "approval", HEAD, {"approved": True}))
    assert order(ad, restore.reference).status == OrderStatus.COMPLETED
    assert run.state == "completed"
    next_due = order(ad, ref).review_due_on
    assert next_due is not None
    clock.set(next_due)
    assert reminders(ad, clock.now(), ref) == []


def test_only_the_head_of_the_ordering_unit_records_the_outcome(ad: Adapters, clock: FixedClock) -> None:
    clock.set(stockholm(2022, 5, 3, 10, 0))
    ref = executed_and_due(ad, clock, timedelta(hours=1))
    for actor in ("DEMO-JONKOPING-HEAD", "DEMO-KALMAR-CLINICIAN", "DEMO-ADMIN", "NOBODY"):
        with pytest.raises(ReviewRefused) as exc:
            outcome(ad, ref, "keep", clock.now(), actor)
        assert exc.value.status == 403
    with pytest.raises(NotFound):
        outcome(ad, "RO-2022-999999", "keep", clock.now())
    with pytest.raises(ReviewRefused) as bad:
        outcome(ad, ref, "forget", clock.now())
    assert bad.value.status == 422
    assert audit_rows(ad, ref, "review_kept") == []


def test_no_outcome_before_the_review_date(ad: Adapters, clock: FixedClock) -> None:
    clock.set(stockholm(2022, 5, 10, 10, 0))
    ref = executed(ad, clock.now())
    clock.advance(days=364)
    with pytest.raises(ReviewRefused) as exc:
        outcome(ad, ref, "keep", clock.now())
    assert (exc.value.status, exc.value.code) == (409, "review_not_due")


def test_a_guardian_block_is_kept_but_not_restored_by_a_restore_access_order(ad: Adapters) -> None:
    at = stockholm(2022, 6, 7, 10, 0)
    child = personal_number(stockholm(2016, 1, 20, 0, 0).date(), 118)
    guardian = personal_number(stockholm(1980, 3, 3, 0, 0).date(), 224)
    ref = submit_at(ad, at, body(child, "block_guardian", guardian_personal_number=guardian))
    execute_at(ad, at, ref)
    due = order(ad, ref).review_due_on
    assert due is not None
    with pytest.raises(ReviewRefused) as exc:
        outcome(ad, ref, "restore", due)
    assert (exc.value.status, exc.value.code) == (422, "restore_not_available")
    assert outcome(ad, ref, "keep", due).outcome == "keep"


def test_review_period_keys() -> None:
    at = stockholm(2023, 3, 26, 1, 30)  # the night the clocks go forward
    assert sla.review_period(at) == "20230326"
    assert sla.review_event(at) == "review-20230326"
    assert sla.restriction_lifted(["seal_journal", "lock_login"], [["seal_journal"], ["lock_login"]])
    assert not sla.restriction_lifted(["seal_journal", "lock_login"], [["seal_journal"]])
    assert not sla.restriction_lifted([], [])


@pytest.mark.e2e
def test_the_daily_flow_reminds_once(ad: Adapters, prefect_server: str, smtp: Any) -> None:
    """The `review-reminders` flow itself, as its deployment runs it (a Prefect flow run, with the process's
    own adapters from the environment: the same orders database)."""
    from prefect.logging.handlers import APILogWorker

    from flows.review import review_reminders
    from tests.e2e import wait_mails
    at = stockholm(2018, 10, 2, 10, 0)     # review due 2019-10-02: before any other test's review date
    ref = executed(ad, at)
    due = order(ad, ref).review_due_on
    assert due is not None
    # The completion confirmations were queued with the status; the routine (or housekeeping) sends them.
    ad.mail.deliver(ref)
    wait_mails(smtp, ref, 2)
    try:
        assert review_reminders(now=due + timedelta(hours=1)) == {"reminded": 1, "sent": 1, "failed": 0}
        assert review_reminders(now=due + timedelta(days=1))["reminded"] == 0
    finally:
        # The flow runs' log lines go to the server now, while it is up: left queued, they would be retried
        # against a stopped server for over a minute at the end of the session.
        APILogWorker.drain_all(timeout=30)
    got = wait_mails(smtp, ref, 3)
    [m] = [m for m in got if ".review-" in str(m["Message-ID"])]
    assert str(m["To"]) == "demo-kalmar-head@kalmar.invalid"
