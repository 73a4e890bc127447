"""The orders database failing under a request: a clear 503 and nothing half-written.

Two faults: the database cannot be reached at all, and the database fails in the middle of the submit's
transaction (after the order row and its reference were written, before its audit row). Both answer 503
with `database_unavailable`; afterwards the next order gets the next reference, so nothing of the failed
one was kept (not even its number).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from models.tables import AuditEvent, Order, OutboxMessage, ReferenceCounter
from tasks import audit, launch
from tasks.database import session
from tasks.settings import settings
from tests.webapp import body

CLINICIAN = {"X-Remote-User": "DEMO-KALMAR-CLINICIAN"}


@pytest.fixture()
def app(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from forms.app import create_app

    async def no_run(reference: str, *, restart: int = 0) -> None:
        return None  # these orders must stay out of Prefect: only the database is under test
    monkeypatch.setattr(launch, "start_run", no_run)
    with TestClient(create_app(), client=("127.0.0.1", 40000), raise_server_exceptions=False) as c:
        yield c


def _rows() -> tuple[int, int, int, int]:
    with session() as s:
        return (int(s.scalar(select(func.count()).select_from(Order)) or 0),
                int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0),
                int(s.scalar(select(func.count()).select_from(OutboxMessage)) or 0),
                int(s.scalar(select(func.sum(ReferenceCounter.last))) or 0))


def _last_number(reference: str) -> int:
    return int(reference.rsplit("-", 1)[1])


def test_database_unreachable_at_submit_answers_503(app: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _rows()
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    settings.cache_clear()
    try:
        r = app.post("/api/orders", json=body(), headers=CLINICIAN)
        page = app.get("/bestallningar", headers=CLINICIAN)
    finally:
        monkeypatch.undo()
        settings.cache_clear()
    assert r.status_code == 503, r.text
    assert r.json()["errors"][0]["code"] == "database_unavailable" and r.headers["Retry-After"] == "30"
    assert "Inget sparades" in r.json()["errors"][0]["message"]
    assert page.status_code == 503 and "pappersblanketten" in page.text  # the page says what to do instead
    assert _rows() == before


def test_database_failing_mid_submit_keeps_nothing(app: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    first = app.post("/api/orders", json=body(), headers=CLINICIAN)
    assert first.status_code == 201, first.text
    before = _rows()
    real = audit.record

    def connection_lost(s: Any, *, action: str, **kw: Any) -> Any:
        if action == "submitted":
            s.flush()  # the order row and its reference are written by now
            raise OperationalError("INSERT INTO audit_events", {}, Exception("server closed the connection"))
        return real(s, action=action, **kw)
    monkeypatch.setattr(audit, "record", connection_lost)
    failed = app.post("/api/orders", json=body(urgent=True), headers=CLINICIAN)
    monkeypatch.setattr(audit, "record", real)
    assert failed.status_code == 503 and failed.json()["errors"][0]["code"] == "database_unavailable"
    assert _rows() == before  # no order, no audit row, no page queued, no reference used

    again = app.post("/api/orders", json=body(), headers=CLINICIAN)
    assert again.status_code == 201
    assert _last_number(again.json()["reference"]) == _last_number(first.json()["reference"]) + 1
