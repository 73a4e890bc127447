"""The reconciler at scale: with hundreds of orders waiting, an order whose run was never started and a
decision waiting to be handed over are still found in the next round, and the liveness check walks the
whole table a window at a time. The engine is a recorder here (tasks/adapters/engine.py's `Engine`,
passed to the composition root; the end-to-end tests use the real Prefect server); the orders database is
this module's own, so the session's served flows never see these orders.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session

from flows.bootstrap import build
from models.tables import AuditEvent, Decision, Order, ReferenceCounter
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.engine import PREFECT_PAGE, PrefectEngine, RunInfo
from tasks.adapters.events import RecordedEvents
from tasks.adapters.settings import Settings
from tasks.steps import orders, stages
from tasks.steps.runs import LivenessWindow, reconcile, start_run
from tests.conftest import own_database
from tests.fake_engine import StubEngine
from tests.webapp import body, pnr

WAITING = 450
WINDOW = 200


@pytest.fixture(scope="module")
def reconcile_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "reconcile", first_reference=700000)


def _order(ref: str, run_id: str | None, status: str = "awaiting_assessment") -> Order:
    now = datetime.now(UTC)
    return Order(reference=ref, order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
                 patient_pnr=pnr().replace("-", ""), care_unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar",
                 status=status, submitted_by="DEMO-KALMAR-CLINICIAN", created_at=now, updated_at=now,
                 due_at=now + timedelta(days=1), stage_plan={}, flow_name="seal-or-lock", flow_run_id=run_id)


class Recorder(StubEngine):
    """An engine that records what the reconciler asks of it; every run it is asked about is suspended."""
    name = "recorder"

    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []   # (reference, idempotency key)
        self.resumed: list[tuple[str, dict[str, Any]]] = []
        self.read: list[str] = []
        self.batches: list[int] = []

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        self.created.append((reference, key))
        return str(uuid.uuid4())

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> bool:
        self.resumed.append((run_id, run_input))
        return True

    async def set_state(self, run_id: str, state: str, message: str) -> None:
        raise AssertionError(f"the reconciler must not set {run_id} {state}: every run is alive")

    async def read_runs(self, run_ids: list[str]) -> dict[str, RunInfo]:
        self.batches.append(len(run_ids))
        self.read += run_ids
        return await super().read_runs(run_ids)


def _adapters(settings: Settings, database: Database, engine: Any) -> Adapters:
    # The liveness check every round (not every run_liveness_seconds): the test counts rounds.
    return build(settings.model_copy(update={"run_liveness_seconds": 0.0}), db=database, engine=engine,
                 events=RecordedEvents())


def test_a_late_order_and_a_late_decision_are_found_behind_hundreds_waiting(settings: Settings,
                                                                            reconcile_db: Database) -> None:
    fake = Recorder()
    ad = _adapters(settings, reconcile_db, fake)
    runs = {f"RO-2026-{700001 + i}": str(uuid.uuid4()) for i in range(WAITING)}
    with ad.db.session() as s:
        s.add_all(_order(ref, run) for ref, run in runs.items())
        s.add(_order("RO-2026-799998", None))  # its run never started (Prefect was down at submit)
    with ad.db.session() as s:  # a decision stored while its run could not be told, on the last waiting order
        last = s.query(Order).filter_by(reference="RO-2026-700450").one()
        d = Decision(order_id=last.id, stage="harm_assessment", decided_by="DEMO-KALMAR-ASSESSOR",
                     outcome="restrict", detail={"harm_found": True}, text="", state="proposed",
                     created_at=datetime.now(UTC))
        s.add(d)
        s.flush()
        decision_id = d.id

    window = LivenessWindow()
    first = asyncio.run(reconcile(ad, limit=WINDOW, window=window))
    assert fake.created == [("RO-2026-799998", "RO-2026-799998")]  # the reference is the idempotency key
    # The decision reaches its run as the stored decision's id, nothing else.
    assert fake.resumed == [(runs["RO-2026-700450"], {"decision_id": decision_id})]
    assert first == {"started": 1, "resumed": 1, "restarted": 0, "failed": 0}
    with ad.db.session() as s:
        started = s.query(Order).filter_by(reference="RO-2026-799998").one()
        assert started.flow_run_id is not None
        assert s.query(AuditEvent).filter_by(order_reference="RO-2026-799998", action="run_started").count() == 1
    # The liveness window walks the table: 200, 200, 51 (and the pending one each time), then wraps.
    asyncio.run(reconcile(ad, limit=WINDOW, window=window))
    asyncio.run(reconcile(ad, limit=WINDOW, window=window))
    assert set(runs.values()) <= set(fake.read)
    assert window.after == 0
    assert len(fake.read) <= WAITING + 1 + 3 + WINDOW  # each run read once per sweep, plus the pending one
    assert max(fake.batches) <= WINDOW + 1  # one window (and the pending decision's run) per read


class PagedClient:
    """Prefect's client as PrefectEngine.read_runs uses it: records how many runs each request asks for."""

    def __init__(self, limits: list[int]) -> None:
        self.limits = limits

    async def __aenter__(self) -> PagedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
        ids = list(flow_run_filter.id.any_)
        assert len(ids) <= limit <= PREFECT_PAGE
        self.limits.append(limit)
        state = type("State", (), {"type": type("T", (), {"value": "PAUSED"})(), "name": "Suspended"})()
        return [type("Run", (), {"id": i, "state": state, "work_queue_name": None, "tags": []})() for i in ids]


class PagedEngine(PrefectEngine):
    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    def client(self) -> Any:
        return PagedClient(self.limits)


def test_prefect_engine_reads_runs_a_page_at_a_time() -> None:
    """Prefect's API answers at most PREFECT_PAGE runs per request: a window larger than that is read in pages."""
    engine = PagedEngine()
    ids = [str(uuid.uuid4()) for _ in range(2 * PREFECT_PAGE + 17)]
    got = asyncio.run(engine.read_runs(ids))
    assert set(got) == set(ids) and all(r.paused for r in got.values())
    assert engine.limits == [PREFECT_PAGE, PREFECT_PAGE, 17]


def test_a_run_whose_first_step_commits_while_its_start_is_recorded_is_still_recorded(
        settings: Settings, reconcile_db: Database) -> None:
    """A served or worker-run flow can start within moments of its creation, and the reconciler of another
    process may record the same run (the same idempotency key): the order row changes while `start_run`
    records the run. Played here in one thread: the run's first step (receive) commits just before
    `start_run` writes."""
    ad = _adapters(settings, reconcile_db, Recorder())
    with ad.db.session() as s:  # past the references the other tests of this database stored by hand
        for counter in s.scalars(select(ReferenceCounter)):
            counter.last = max(counter.last, 800000)
    out = orders.submit(ad, body(), "DEMO-KALMAR-CLINICIAN", ad.now())
    assert out.order is not None
    ref = out.order.reference
    fired: list[str] = []

    def first_step_meanwhile(state: ORMExecuteState) -> None:
        if not fired and state.is_update:  # start_run's write of the run id
            fired.append("receiving")  # once: receive's own statements come through here too
            fired[0] = stages.receive(ad, ref)  # in its own transaction, committed before this write

    event.listen(Session, "do_orm_execute", first_step_meanwhile)
    try:
        run_id = asyncio.run(start_run(ad, ref))
    finally:
        event.remove(Session, "do_orm_execute", first_step_meanwhile)
    assert fired == ["awaiting_assessment"]
    assert run_id is not None
    with ad.db.session() as s:
        order = orders.get(s, ref)
        assert (order.flow_run_id, order.status) == (run_id, "awaiting_assessment")
        assert len(list(s.scalars(select(AuditEvent.id).where(AuditEvent.order_reference == ref,
                                                               AuditEvent.action == "run_started")))) == 1
