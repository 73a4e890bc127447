"""Housekeeping's watch over order runs (tasks/steps/runs.py, issue 15 item 2), on the in-process engine:
runs crashed because nobody executed them are noted on the order and counted on /healthz, a stored decision
that has not moved its order for `stalled_decision_seconds` shows on /healthz and fires its event once, and
a resume refused for "Run input schema not found" is tried again for a second before the run is replaced."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import AuditEvent, Decision, Order
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.engine import NotResumable, PrefectEngine
from tasks.adapters.settings import Settings
from tasks.steps import runs
from tests.conftest import own_database
from tests.e2e import body, status, submit


@pytest.fixture(scope="module")
def own_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "engine_hk", first_reference=960000)


@pytest.fixture
def iad(own_db: Database, settings: Settings) -> Adapters:
    from flows.bootstrap import in_process
    return in_process(settings, db=own_db)


def _waiting_order(ad: Adapters) -> Order:
    ref = submit(ad, body("seal_or_lock"))
    assert status(ad, ref) == "awaiting_assessment"
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None
        s.expunge(order)
    return order


def _store_decision(ad: Adapters, order: Order, age: timedelta) -> int:
    """A decision stored as the app stores it, that the run never took (as when nobody executes the run)."""
    with ad.db.session() as s:
        d = Decision(order_id=order.id, stage="harm_assessment", decided_by="DEMO-KALMAR-ASSESSOR",
                     outcome="restrict", detail={}, state="proposed", created_at=ad.now() - age)
        s.add(d)
        s.flush()
        return d.id


def _actions(ad: Adapters, reference: str, action: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference,
                                                       AuditEvent.action == action)))


def test_a_stored_decision_that_does_not_move_shows_on_healthz_and_fires_its_event_once(iad: Adapters) -> None:
    from forms.health import _runs
    fresh = _waiting_order(iad)
    _store_decision(iad, fresh, timedelta(seconds=30))
    assert runs.report_stalled(iad) == 0
    assert _runs(iad).ok, "a decision 30 s old is normal"
    order = _waiting_order(iad)
    decision_id = _store_decision(iad, order, timedelta(minutes=3))
    stalled = runs.stalled_decisions(iad)
    assert [(x.reference, x.decision_id) for x in stalled] == [(order.reference, decision_id)]
    health = _runs(iad)
    assert not health.ok and order.reference in health.detail and fresh.reference not in health.detail
    before = len(iad.events.sent)  # type: ignore[attr-defined]
    assert runs.report_stalled(iad) == 1
    assert runs.report_stalled(iad) == 0, "each stalled decision is reported once"
    sent = iad.events.sent[before:]  # type: ignore[attr-defined]
    assert [e["event"] for e in sent] == [runs.STALLED_EVENT]
    assert sent[0]["resource"]["prefect.resource.id"] == f"order.{order.reference}"
    assert sent[0]["payload"]["stage"] == "harm_assessment"
    assert len(_actions(iad, order.reference, runs.STALLED_ACTION)) == 1
    # A shorter setting: the 30 s old one is stalled too.
    short = dataclasses.replace(iad, settings=iad.settings.model_copy(update={"stalled_decision_seconds": 10.0}))
    assert {x.reference for x in runs.stalled_decisions(short)} == {order.reference, fresh.reference}
    with iad.db.session() as s:  # the run takes them: nothing stalled any more
        for d in s.scalars(select(Decision).where(Decision.order_id.in_([order.id, fresh.id]))):
            d.state = "accepted"
    assert _runs(iad).ok


class _StuckEngine:
    """The in-process engine, plus the Prefect engine's `crash_stuck` answering what a sweep crashed."""

    def __init__(self, inner: Any, crashed: list[tuple[str, str, str]]) -> None:
        self.inner, self.crashed, self.calls = inner, crashed, 0

    async def crash_stuck(self, flow_names: list[str], threshold: float) -> list[tuple[str, str, str]]:
        self.calls += 1
        assert "seal-or-lock" in flow_names and "urgent-order" in flow_names and threshold == 30.0
        return self.crashed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_runs_crashed_as_stuck_are_noted_on_their_order_and_counted_on_healthz(iad: Adapters) -> None:
    from forms.health import _runs
    order = _waiting_order(iad)
    assert order.flow_run_id
    since = iad.now() - timedelta(seconds=1)
    before = runs.stuck_runs_crashed_since(iad, since)
    engine = _StuckEngine(iad.engine, [(order.reference, order.flow_run_id, "Pending/Submitting: claimed but "
                                        "never started (worker w1 silent for 31 s)"),
                                       ("not-an-order", "00000000-0000-0000-0000-000000000000", "whatever")])
    ad = dataclasses.replace(iad, engine=engine)  # type: ignore[arg-type]
    assert asyncio.run(runs.crash_stuck(ad)) == 2
    rows = _actions(iad, order.reference, runs.STUCK_ACTION)
    assert len(rows) == 1 and rows[0].detail["flow_run_id"] == order.flow_run_id
    assert "claimed but never started" in rows[0].detail["reason"]
    assert runs.stuck_runs_crashed_since(iad, since) == before + 1
    assert f"{before + 1} fastnade körningar" in _runs(iad).detail
    assert asyncio.run(runs.crash_stuck(iad)) == 0, "the in-process engine has no workers to lose"


def test_resume_waits_for_prefects_input_schema_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.flow_runs
    calls: list[float] = []
    refusals = {"left": 3}

    async def resume(flow_run_id: Any, run_input: Any = None) -> None:
        calls.append(time.monotonic())
        if refusals["left"]:
            refusals["left"] -= 1
            raise RuntimeError("Cannot resume this run: Run input schema not found.")

    monkeypatch.setattr(prefect.flow_runs, "aresume_flow_run", resume)
    engine = PrefectEngine()
    run_id = "00000000-0000-0000-0000-000000000001"
    assert asyncio.run(engine.resume(run_id, {"decision_id": 1})) is True
    assert len(calls) == 4 and calls[-1] - calls[0] < 1.0
    calls.clear()
    refusals["left"] = 1000
    t0 = time.monotonic()
    with pytest.raises(NotResumable):
        asyncio.run(engine.resume(run_id, {"decision_id": 1}))
    assert 0.9 <= time.monotonic() - t0 < 2.0 and len(calls) >= 5

    async def other(flow_run_id: Any, run_input: Any = None) -> None:
        raise RuntimeError("Cannot resume this run: something else")
    monkeypatch.setattr(prefect.flow_runs, "aresume_flow_run", other)
    t0 = time.monotonic()
    with pytest.raises(NotResumable):
        asyncio.run(engine.resume(run_id, {"decision_id": 1}))
    assert time.monotonic() - t0 < 0.5, "any other refusal is final at once"


def test_the_logging_settings_for_every_process_lower_suspensions_to_info(tmp_path: Any) -> None:
    """What `make run` gives every process (PREFECT_LOGGING_SETTINGS_PATH), and the tests too: the engine's
    `Finished in state Suspended` line at INFO, a failure still at ERROR."""
    import logging
    import logging.config

    import yaml

    from tasks.adapters.quiet_suspensions import FLOW_RUN_LOGGER, write_logging_settings
    config = yaml.safe_load(write_logging_settings(tmp_path / "logging.yml").read_text())
    assert "suspensions_at_info" in config["loggers"][FLOW_RUN_LOGGER]["filters"]
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    saved = list(logger.filters)
    try:
        logger.filters.clear()
        filt = logging.config.DictConfigurator(config).configure_filter(config["filters"]["suspensions_at_info"])
        logger.addFilter(filt)
        records: list[logging.LogRecord] = []
        for msg in ("Finished in state Suspended('Paused for input', type=PAUSED)", "Finished in state Failed('x')"):
            rec = logger.makeRecord(FLOW_RUN_LOGGER, logging.ERROR, __file__, 1, msg, None, None)
            assert filt.filter(rec)
            records.append(rec)
        assert [r.levelname for r in records] == ["INFO", "ERROR"]
    finally:
        logger.filters[:] = saved


def test_the_admin_overview_lists_stalled_decisions(iad: Adapters) -> None:
    from datetime import datetime

    from forms.admin_routes import Filters, overview_data
    order = _waiting_order(iad)
    _store_decision(iad, order, timedelta(minutes=5))
    data = overview_data(iad, iad.now(), Filters(None, None))
    rows = [r for r in data["stalled_decisions"] if r["reference"] == order.reference]
    assert rows and rows[0]["stage"] == "harm_assessment" and rows[0]["waited_minutes"] >= 5
    assert isinstance(datetime.fromisoformat(data["generated_at"]), datetime)
