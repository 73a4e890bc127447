"""`tasks.steps.runs.start_run` when the order changes between its read of the order and its write of the run
id: another start of the same run (the reconciler beside a submit: the same idempotency key gives the same
run) stores it first, or the run's first step moves the order on. Neither is an error (it was a
StaleDataError on PostgreSQL), and the run is recorded once. The engine is a fake that gives one run per
key; the orders database is this module's own (no reconciler of the session may start these orders' runs).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from flows.bootstrap import in_process
from models.tables import AuditEvent, Order
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import runs
from tests.conftest import own_database
from tests.webapp import pnr


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "startrace", first_reference=710000)


class OneRunPerKey:
    """The engine as start_run sees it: one run per idempotency key (Prefect's promise), no queues (a served
    deployment). `meanwhile(run_id)` runs inside create_run, once: after start_run read the order, before it
    writes the run id. No other engine call is expected here."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}
        self.begun: list[str] = []
        self.meanwhile: Callable[[str], Awaitable[None]] | None = None

    async def work_queue_for(self, flow_name: str, urgent: bool) -> str | None:
        return None

    async def create_run(self, flow_name: str, reference: str, *, key: str, tags: list[str],
                         work_queue: str | None) -> str:
        run_id = self.runs.setdefault(key, str(uuid.uuid4()))
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            await meanwhile(run_id)
        return run_id

    async def begin(self, run_id: str) -> None:
        self.begun.append(run_id)


@pytest.fixture
def engine() -> OneRunPerKey:
    return OneRunPerKey()


@pytest.fixture
def ad(db: Database, settings: Settings, engine: OneRunPerKey) -> Adapters:
    return in_process(settings, db=db, engine=engine)


def submitted_order(ad: Adapters) -> str:
    """A submitted order without a run, as a submit leaves it before its run is started."""
    now = datetime.now(UTC)
    ref = f"RO-{now.year}-{uuid.uuid4().int % 10**6:06d}"
    with ad.db.session() as s:
        s.add(Order(reference=ref, order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
                    patient_pnr=pnr().replace("-", ""), care_unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar",
                    status="submitted", submitted_by="DEMO-KALMAR-CLINICIAN", created_at=now, updated_at=now,
                    due_at=now + timedelta(days=1), stage_plan={}, flow_name="seal-or-lock"))
    return ref


def stored(ad: Adapters, ref: str) -> tuple[Order, list[AuditEvent]]:
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None
        return order, list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                              AuditEvent.action == "run_started")))


@contextmanager
def just_before_the_run_id_is_written(ad: Adapters, other: Callable[[], None]) -> Iterator[None]:
    """Run `other` once, just before the first statement that writes an order's run id goes to the database:
    after this start read the order, whatever it read it with, and before its write."""
    fired: list[str] = []

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.lstrip().upper().startswith("UPDATE ORDERS") and "flow_run_id" in statement:
            fired.append(statement)
            other()

    event.listen(ad.db.engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(ad.db.engine, "before_cursor_execute", hook)
    assert fired, "the run id was never written"


def test_a_run_stored_by_another_start_meanwhile_is_not_an_error(ad: Adapters, engine: OneRunPerKey) -> None:
    """Between this start's read of the order and its write (a version race: StaleDataError, seen on
    PostgreSQL)."""
    ref = submitted_order(ad)

    def the_other_start_stores_it() -> None:  # its audit row is its own business
        with ad.db.session() as other:
            order = other.scalar(select(Order).where(Order.reference == ref))
            assert order is not None
            order.flow_run_id = engine.runs[ref]

    with just_before_the_run_id_is_written(ad, the_other_start_stores_it):
        run_id = asyncio.run(runs.start_run(ad, ref))
    assert run_id == engine.runs[ref]
    order, started = stored(ad, ref)
    assert order.flow_run_id == run_id
    assert not started  # this start found the run stored: it records nothing
    assert engine.begun == [run_id]


def test_two_starts_at_once_record_the_run_once(ad: Adapters, engine: OneRunPerKey) -> None:
    """The other start is a whole start_run of the same order, from its read to its write, inside this one's."""
    ref = submitted_order(ad)
    other: list[str | None] = []

    async def the_other_start(run_id: str) -> None:
        other.append(await runs.start_run(ad, ref))

    engine.meanwhile = the_other_start
    run_id = asyncio.run(runs.start_run(ad, ref))
    assert run_id == engine.runs[ref] and other == [run_id]
    order, started = stored(ad, ref)
    assert order.flow_run_id == run_id
    assert len(started) == 1 and started[0].detail["flow_run_id"] == run_id
    assert set(engine.begun) == {run_id}


def test_the_runs_first_step_moving_the_order_on_meanwhile_is_not_an_error(ad: Adapters,
                                                                           engine: OneRunPerKey) -> None:
    """A worker picks the new run up at once and its first step changes the order (its version with it)
    before this start writes the run id: the run id is written, the step's change kept."""
    ref = submitted_order(ad)

    async def the_first_step(run_id: str) -> None:
        with ad.db.session() as s:
            order = s.scalar(select(Order).where(Order.reference == ref))
            assert order is not None
            order.status = "awaiting_assessment"

    engine.meanwhile = the_first_step
    run_id = asyncio.run(runs.start_run(ad, ref))
    assert run_id == engine.runs[ref]
    order, started = stored(ad, ref)
    assert (order.flow_run_id, order.status) == (run_id, "awaiting_assessment")
    assert len(started) == 1
    assert engine.begun == [run_id]
