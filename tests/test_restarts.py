"""A run that always fails: the reconciler restarts it with backoff, at most five times, then sets the
order to failed and tells people. Prefect is replaced by a recorder whose runs all end at once (the real
server is in the end-to-end tests); the orders database is this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models.clock import FixedClock
from models.runs import RestartPolicy, RestartVerdict, RunHistory, history_from_audit
from models.tables import AuditEvent, Order
from tasks.adapters import audit
from tasks.adapters.database import session
from tasks.steps import runs as launch
from tasks.steps.orders import transition
from tests.conftest import own_database
from tests.webapp import pnr


@pytest.fixture(scope="module", autouse=True)
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield from own_database(tmp_path_factory, "restarts", first_reference=760000)


def _order(ref: str) -> Order:
    now = datetime.now(UTC)
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

class AlwaysFailing:
    """Prefect where every run of the order has failed: it records when the reconciler starts new ones."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.restarts: dict[str, list[datetime]] = {}
        self.events: list[tuple[str, int]] = []
        self.runs: set[str] = set()

    async def start_run(self, reference: str, *, restart: int = 0) -> str:
        run_id = str(uuid.uuid4())
        with session() as s:  # what the real start_run records
            order = s.query(Order).filter_by(reference=reference).one()
            order.flow_run_id = run_id
            audit.record(s, actor="system", action="run_started", order=order, at=self.clock.now(),
                         detail={"flow_run_id": run_id, "restart": restart})
        self.restarts.setdefault(reference, []).append(self.clock.now())
        self.runs.add(run_id)
        return run_id

    def get_client(self) -> Any:
        runs = self.runs

        class Client:
            async def __aenter__(self) -> Client:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
                # Only this test's runs fail; the other orders in the module's database are waiting.
                crashed = type("State", (), {"is_paused": lambda self: False, "is_final": lambda self: True})()
                waiting = type("State", (), {"is_paused": lambda self: True, "is_final": lambda self: False})()
                return [type("Run", (), {"id": i, "state": crashed if str(i) in runs else waiting})()
                        for i in flow_run_filter.id.any_]
        return Client()


def test_a_run_that_always_fails_is_restarted_with_backoff_then_the_order_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FixedClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    fake = AlwaysFailing(clock)
    monkeypatch.setattr(launch, "start_run", fake.start_run)
    monkeypatch.setattr(launch, "prefect_client", fake.get_client)
    monkeypatch.setattr(launch, "emit_exhausted", lambda ref, run, n, now: fake.events.append((ref, n)))
    monkeypatch.setattr(launch, "_window_after", 0)
    monkeypatch.setattr(launch, "liveness_every", lambda: 0.0)  # every round, as the tests count rounds
    ref = "RO-2026-769990"
    with session() as s:
        order = _order(ref)
        order.created_at = order.updated_at = clock.now()
        s.add(order)
    asyncio.run(fake.start_run(ref))  # its first run, which fails like every later one
    fake.restarts.clear()
    started = fake.restarts.setdefault(ref, [])

    rounds = 0
    while _status(ref) != "failed":
        asyncio.run(launch.reconcile(now=clock.now()))
        clock.advance(seconds=2)  # the embedded default's housekeeping round
        rounds += 1
        assert rounds < 200, started

    assert len(started) == 5
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    assert gaps == sorted(gaps) and len(set(gaps)) == len(gaps)  # each later than the one before
    assert [g >= want for g, want in zip(gaps, (10, 20, 40, 80), strict=True)] == [True] * 4
    with session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                        AuditEvent.action == "run_restarts_exhausted")))
    assert len(rows) == 1 and rows[0].from_status == "awaiting_assessment" and rows[0].to_status == "failed"
    assert rows[0].detail["restarts"] == 5
    assert fake.events == [(ref, 5)]
    asyncio.run(launch.reconcile(now=clock.advance(hours=1)))  # a failed order is left alone
    assert len(started) == 5


def test_a_restarted_run_that_gets_further_starts_the_count_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FixedClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    fake = AlwaysFailing(clock)
    monkeypatch.setattr(launch, "start_run", fake.start_run)
    monkeypatch.setattr(launch, "prefect_client", fake.get_client)
    monkeypatch.setattr(launch, "_window_after", 0)
    monkeypatch.setattr(launch, "liveness_every", lambda: 0.0)  # every round, as the tests count rounds
    ref = "RO-2026-769991"
    with session() as s:
        s.add(_order(ref))
    asyncio.run(fake.start_run(ref))
    for _ in range(4):  # four restarts, the last one 80 s after the one before
        asyncio.run(launch.reconcile(now=clock.advance(seconds=80)))
    assert len(fake.restarts[ref]) == 5  # the first run and four restarts
    with session() as s:  # the fourth restarted run moved the order on before it failed
        order = s.query(Order).filter_by(reference=ref).one()
        transition(s, order, "awaiting_approval", actor="DEMO-KALMAR-ASSESSOR", action="assessed",
                   at=clock.now())
    asyncio.run(launch.reconcile(now=clock.advance(seconds=1)))
    assert len(fake.restarts[ref]) == 6 and _status(ref) == "awaiting_approval"  # at once: a new failure


def _status(reference: str) -> str:
    with session() as s:
        return str(s.query(Order).filter_by(reference=reference).one().status)
