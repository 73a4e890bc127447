"""A run that always fails: the reconciler restarts it with backoff, at most five times, then sets the
order to failed and tells people. The engine is a recorder whose runs of the order all end at once
(tasks/adapters/engine.py's `Engine`, passed to the composition root; the real server is in the
end-to-end tests); the clock is pinned and moved by the test; the orders database is this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from flows.bootstrap import build
from models.clock import FixedClock
from models.runs import RestartPolicy, RestartVerdict, RunHistory, history_from_audit
from models.tables import AuditEvent, Order, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.engine import RunInfo
from tasks.adapters.events import RecordedEvents
from tasks.adapters.settings import Settings
from tasks.steps.orders import transition
from tasks.steps.runs import EXHAUSTED_EVENT, LivenessWindow, reconcile, start_run
from tests.conftest import own_database
from tests.fake_engine import StubEngine
from tests.webapp import pnr


@pytest.fixture(scope="module")
def restarts_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "restarts", first_reference=760000)


def _order(ref: str, now: datetime) -> Order:
    return Order(reference=ref, order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
                 patient_pnr=pnr().replace("-", ""), care_unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar",
                 status="awaiting_assessment", submitted_by="DEMO-KALMAR-CLINICIAN", created_at=now,
                 updated_at=now, due_at=now + timedelta(days=1), stage_plan={}, flow_name="seal-or-lock")


def test_the_policy_waits_longer_each_time_and_gives_up_after_five() -> None:
    p = RestartPolicy()
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert [p.delay(n).total_seconds() for n in range(5)] == [0, 10, 20, 40, 80]
    assert p.verdict(RunHistory(0, t0), t0) == RestartVerdict.RESTART  # a crash: at once
    assert p.verdict(RunHistory(1, t0), t0.replace(second=9)) == RestartVerdict.WAIT
    assert p.verdict(RunHistory(1, t0), t0.replace(second=10)) == RestartVerdict.RESTART
    assert p.verdict(RunHistory(5, t0), t0.replace(hour=23)) == RestartVerdict.GIVE_UP
    rows = [("run_started", None, t0, {"restart": 0}), ("received", "awaiting_assessment", t0, {}),
            ("run_started", None, t0, {"restart": 1}), ("run_started", None, t0.replace(minute=5), {"restart": 2})]
    assert history_from_audit(rows) == RunHistory(2, t0.replace(minute=5))
    assert history_from_audit([*rows, ("assessed", "awaiting_approval", t0, {})]).restarts_since_progress == 0


# --- a run that always fails ------------------------------------------------------------------------------

class AlwaysFailing(StubEngine):
    """An engine where every run of the order fails as soon as it starts: it records, by the pinned clock,
    when the reconciler starts new ones (each with its own idempotency key)."""
    name = "always failing"

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.restarts: dict[str, list[datetime]] = {}
        self.keys: list[str] = []
        self.runs: set[str] = set()

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        assert key not in self.keys, f"the same idempotency key twice: {key}"
        self.keys.append(key)
        run_id = str(uuid.uuid4())
        self.restarts.setdefault(reference, []).append(self.clock.now())
        self.runs.add(run_id)
        return run_id

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        # Only this engine's runs fail; any other order in the module's database waits in a human step.
        return {r: RunInfo(r, "failed", "Failed") if r in self.runs else RunInfo(r, "paused", "Suspended")
                for r in run_ids}


def _failing_order(settings: Settings, database: Database, ref: str) -> tuple[FixedClock, AlwaysFailing, Adapters]:
    clock = FixedClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    fake = AlwaysFailing(clock)
    # The liveness check every round (not every run_liveness_seconds): the tests count rounds.
    ad = build(settings.model_copy(update={"run_liveness_seconds": 0.0}), db=database, engine=fake,
               clock=clock, events=RecordedEvents())
    with ad.db.session() as s:
        s.add(_order(ref, clock.now()))
    return clock, fake, ad


def test_a_run_that_always_fails_is_restarted_with_backoff_then_the_order_fails(
        settings: Settings, restarts_db: Database) -> None:
    ref = "RO-2026-769990"
    clock, fake, ad = _failing_order(settings, restarts_db, ref)
    assert asyncio.run(start_run(ad, ref))  # its first run, which fails like every later one
    fake.restarts.clear()
    started = fake.restarts.setdefault(ref, [])

    window = LivenessWindow()
    rounds = 0
    while _status(ad, ref) != "failed":
        asyncio.run(reconcile(ad, window=window))
        clock.advance(seconds=2)  # the embedded default's housekeeping round
        rounds += 1
        assert rounds < 200, started

    assert len(started) == 5
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    assert gaps == sorted(gaps) and len(set(gaps)) == len(gaps)  # each later than the one before
    assert [g >= want for g, want in zip(gaps, (10, 20, 40, 80), strict=True)] == [True] * 4
    assert fake.keys == [ref] + [f"{ref}/restart-{n}" for n in range(1, 6)]  # each restart its own key
    with ad.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                        AuditEvent.action == "run_restarts_exhausted")))
        queued = sorted(m.event for m in s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == ref)))
    assert len(rows) == 1 and rows[0].from_status == "awaiting_assessment" and rows[0].to_status == "failed"
    assert rows[0].detail["restarts"] == 5
    assert queued == ["failed", "failed"]  # the orderer and the region's support queue are told
    exhausted = [e for e in ad.events.sent if e["event"] == EXHAUSTED_EVENT]  # type: ignore[attr-defined]
    assert [(e["resource"]["prefect.resource.id"], e["payload"]) for e in exhausted] == \
        [(f"order.{ref}", {"restarts": 5})]
    asyncio.run(reconcile(ad, now=clock.advance(hours=1), window=window))  # a failed order is left alone
    assert len(started) == 5


def test_a_restarted_run_that_gets_further_starts_the_count_again(settings: Settings,
                                                                   restarts_db: Database) -> None:
    ref = "RO-2026-769991"
    clock, fake, ad = _failing_order(settings, restarts_db, ref)
    asyncio.run(start_run(ad, ref))
    window = LivenessWindow()
    for _ in range(4):  # four restarts, the last one 80 s after the one before
        clock.advance(seconds=80)
        asyncio.run(reconcile(ad, window=window))
    assert len(fake.restarts[ref]) == 5  # the first run and four restarts
    with ad.db.session() as s:  # the fourth restarted run moved the order on before it failed
        order = s.query(Order).filter_by(reference=ref).one()
        transition(s, order, "awaiting_approval", actor="DEMO-KALMAR-ASSESSOR", action="assessed",
                   at=clock.now())
    clock.advance(seconds=1)
    asyncio.run(reconcile(ad, window=window))
    assert len(fake.restarts[ref]) == 6 and _status(ad, ref) == "awaiting_approval"  # at once: a new failure


def _status(ad: Adapters, reference: str) -> str:
    with ad.db.session() as s:
        return str(s.query(Order).filter_by(reference=reference).one().status)
