"""`launch.start_run` when another start of the same run stores it first (the reconciler beside a submit: the
same idempotency key gives the same run): the second start finds the run stored and is not an error.
Prefect is replaced here; the orders database is this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import AuditEvent, Order
from tasks.adapters import audit
from tasks.steps import runs as launch
from tasks.adapters.database import session
from tests.conftest import own_database
from tests.webapp import pnr


@pytest.fixture(scope="module", autouse=True)
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield from own_database(tmp_path_factory, "startrace", first_reference=710000)


def test_a_run_stored_by_another_start_meanwhile_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    ref = f"RO-{now.year}-{uuid.uuid4().int % 10**6:06d}"
    with session() as s:
        s.add(Order(reference=ref, order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
                    patient_pnr=pnr().replace("-", ""), care_unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar",
                    status="submitted", submitted_by="DEMO-KALMAR-CLINICIAN", created_at=now, updated_at=now,
                    due_at=now + timedelta(days=1), stage_plan={}, flow_name="seal-or-lock"))
    run_id = uuid.uuid4()

    class Client:
        async def __aenter__(self) -> Client:
            return self

        async def __aexit__(self, *exc: Any) -> None:
            return None

    async def no_queue(*args: Any) -> None:
        return None

    async def the_run(*args: Any, **kwargs: Any) -> Any:
        return type("FlowRun", (), {"id": run_id})

    real = audit.record

    def the_other_start_first(s: Any, **kw: Any) -> Any:
        if kw["action"] == "run_started":  # between this start's read of the order and its write
            with session() as other:
                order = other.scalar(select(Order).where(Order.reference == ref))
                assert order is not None
                order.flow_run_id = str(run_id)
        return real(s, **kw)

    monkeypatch.setattr(launch, "prefect_client", Client)
    monkeypatch.setattr(launch, "work_queue_for", no_queue)
    monkeypatch.setattr(launch, "arun_deployment", the_run)
    monkeypatch.setattr(audit, "record", the_other_start_first)
    assert asyncio.run(launch.start_run(ref)) == str(run_id)
    with session() as s:
        assert s.scalar(select(Order.flow_run_id).where(Order.reference == ref)) == str(run_id)
        assert not s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                      AuditEvent.action == "run_started")).all()
