"""The reconciler at scale: with hundreds of orders waiting, an order whose run was never started and a
decision waiting to be handed over are still found in the next round, and the liveness check walks the
whole table a window at a time. Prefect is replaced by recorders here (the end-to-end tests use the real
server); the orders database is this module's own, so the session's served flows never see these orders.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from models.tables import Decision, Order
from tasks.adapters.database import session
from tasks.steps import runs as launch
from tests.conftest import own_database
from tests.webapp import pnr

WAITING = 450
WINDOW = 200


@pytest.fixture(scope="module", autouse=True)
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield from own_database(tmp_path_factory, "reconcile", first_reference=700000)


def _order(ref: str, run_id: str | None, status: str = "awaiting_assessment") -> Order:
    now = datetime.now(UTC)
    return Order(reference=ref, order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
                 patient_pnr=pnr().replace("-", ""), care_unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar",
                 status=status, submitted_by="DEMO-KALMAR-CLINICIAN", created_at=now, updated_at=now,
                 due_at=now + timedelta(days=1), stage_plan={}, flow_name="seal-or-lock", flow_run_id=run_id)


class FakePrefect:
    """Records what the reconciler asks of Prefect; every run it is asked about is suspended."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.resumed: list[str] = []
        self.read: list[str] = []

    async def start_run(self, reference: str, *, restart: int = 0) -> str:
        self.started.append(reference)
        return "started"

    async def resume(self, reference: str, stage: str, run_input: dict[str, Any]) -> bool:
        self.resumed.append(reference)
        return True

    def get_client(self) -> Any:
        fake = self

        class Client:
            async def __aenter__(self) -> Client:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def read_flow_runs(self, flow_run_filter: Any, limit: int) -> list[Any]:
                ids = [str(i) for i in flow_run_filter.id.any_]
                assert len(ids) <= limit <= launch.PREFECT_PAGE
                fake.read += ids
                paused = type("State", (), {"is_paused": lambda self: True, "is_final": lambda self: False})()
                return [type("Run", (), {"id": i, "state": paused})() for i in ids]
        return Client()


def test_a_late_order_and_a_late_decision_are_found_behind_hundreds_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePrefect()
    monkeypatch.setattr(launch, "start_run", fake.start_run)
    monkeypatch.setattr(launch, "resume", fake.resume)
    monkeypatch.setattr(launch, "prefect_client", fake.get_client)
    monkeypatch.setattr(launch, "_window_after", 0)
    monkeypatch.setattr(launch, "liveness_every", lambda: 0.0)  # every round, as the tests count rounds
    runs = {f"RO-2026-{700001 + i}": str(uuid.uuid4()) for i in range(WAITING)}
    with session() as s:
        s.add_all(_order(ref, run) for ref, run in runs.items())
        s.add(_order("RO-2026-799998", None))  # its run never started (Prefect was down at submit)
    with session() as s:  # a decision stored while its run could not be told, on the last waiting order
        last = s.query(Order).filter_by(reference="RO-2026-700450").one()
        s.add(Decision(order_id=last.id, stage="harm_assessment", decided_by="DEMO-KALMAR-ASSESSOR",
                       outcome="restrict", detail={"harm_found": True}, text="", state="proposed",
                       created_at=datetime.now(UTC)))

    first = asyncio.run(launch.reconcile(limit=WINDOW))
    assert fake.started == ["RO-2026-799998"]
    assert fake.resumed == ["RO-2026-700450"]
    assert first == {"started": 1, "resumed": 1, "restarted": 0, "failed": 0}
    # The liveness window walks the table: 200, 200, 50 (and the pending one each time), then wraps.
    asyncio.run(launch.reconcile(limit=WINDOW))
    asyncio.run(launch.reconcile(limit=WINDOW))
    assert set(fake.read) == set(runs.values())
    assert launch._window_after == 0
    assert len(fake.read) <= WAITING + 3 + WINDOW  # each run read once per sweep, plus the pending one

