"""Statistics (issue 14) from a known set of five orders: lead time per stage and submit → completed (median,
90th percentile), service levels (answered within one working day, callbacks within the window, escalations,
overdue) and volume (type, initiative, week). Pure unit tests of models/statistics.py, then the same set
through the database, `GET /api/admin/statistics` and its CSV, and the page in Chromium (axe, screenshot).

The known set (T0 = Monday 2 November 2026 08.00, Stockholm), minutes after submission:
  A seal_or_lock  care    normal  harm 60, approval 180, executed 190 (completed in time)
  B block_guard.  care    urgent  callback 20 (window 30), harm 80, approval 100, executed 110 (completed)
  C restore       patient normal  (no harm test) approval 30, executed 40 (completed), week 46
  D seal_or_lock  care    normal  harm 2 days later: do not restrict (rejected after its due time), week 46
  E minor_access  care    urgent  no callback (window passed, escalated), still waiting: overdue, week 46
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from models.clock import STOCKHOLM
from models.statistics import OrderRecord, median, percentile, statistics
from models.tables import Decision, Deviation, Order
from tasks.adapters import Adapters, audit
from tasks.adapters.settings import Settings
from tests.conftest import own_database
from tests.webapp import pnr

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=STOCKHOLM)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=STOCKHOLM)


def m(minutes: float, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=minutes)


DAY = 24 * 60
B0, C0, D0, E0 = m(2 * DAY), m(7 * DAY), m(8 * DAY), m(9 * DAY)
KNOWN = [
    OrderRecord("RO-2026-000001", "seal_or_lock", "care", "kalmar", False, "completed", T0, m(DAY), m(190),
                decided={"harm_assessment": m(60), "approval": m(180), "execution": m(190)}),
    OrderRecord("RO-2026-000002", "block_guardian", "care", "kalmar", True, "completed", B0, m(240, B0), m(110, B0),
                callback_due_at=m(30, B0), callback_at=m(20, B0),
                decided={"callback": m(20, B0), "harm_assessment": m(80, B0), "approval": m(100, B0),
                         "execution": m(110, B0)}),
    OrderRecord("RO-2026-000003", "restore_access", "patient", "kalmar", False, "completed", C0, m(DAY, C0),
                m(40, C0), decided={"approval": m(30, C0), "execution": m(40, C0)}),
    OrderRecord("RO-2026-000004", "seal_or_lock", "care", "kalmar", False, "rejected", D0, m(DAY, D0), m(2 * DAY, D0),
                decided={"harm_assessment": m(2 * DAY, D0)}),
    OrderRecord("RO-2026-000005", "minor_access", "care", "kalmar", True, "awaiting_assessment", E0, m(240, E0),
                callback_due_at=m(30, E0), escalated=True),
]
EXPECTED: dict[str, Any] = {
    "lead_time": {
        "stages": {"callback": {"n": 1, "median_minutes": 20.0, "p90_minutes": 20.0},
                   "harm_assessment": {"n": 3, "median_minutes": 60.0, "p90_minutes": 2880.0},
                   "approval": {"n": 3, "median_minutes": 30.0, "p90_minutes": 120.0},
                   "execution": {"n": 3, "median_minutes": 10.0, "p90_minutes": 10.0}},
        "submit_to_completed": {"n": 3, "median_minutes": 110.0, "p90_minutes": 190.0}},
    "sla": {"answered_within_one_working_day": {"n": 4, "met": 3, "share": 0.75},
            "callbacks_within_window": {"n": 2, "met": 1, "share": 0.5},
            "escalations": 1, "overdue": 2},
    "volume": {"total": 5, "urgent": 2,
               "by_type": {"block_guardian": 1, "minor_access": 1, "restore_access": 1, "seal_or_lock": 2},
               "by_initiative": {"care": 4, "patient": 1},
               "by_week": {"2026-V45": 2, "2026-V46": 3}},
}


# --- pure ---------------------------------------------------------------------------------------------------

def test_median_and_nearest_rank_percentile() -> None:
    assert median([]) is None and percentile([], 90) is None
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5
    assert percentile(list(range(1, 11)), 90) == 9 and percentile(list(range(1, 11)), 100) == 10
    assert percentile([5], 90) == 5 and percentile([1, 2], 90) == 2


def test_statistics_of_the_known_set() -> None:
    assert statistics(KNOWN, NOW) == EXPECTED


def test_an_empty_period_has_no_figures_but_no_errors() -> None:
    s = statistics([], NOW)
    assert s["lead_time"]["submit_to_completed"] == {"n": 0, "median_minutes": None, "p90_minutes": None}
    assert s["sla"]["answered_within_one_working_day"] == {"n": 0, "met": 0, "share": None}
    assert s["volume"]["total"] == 0 and s["volume"]["by_week"] == {}


def test_a_cancelled_order_is_not_late_and_a_callback_still_running_is_not_counted() -> None:
    cancelled = OrderRecord("RO-2026-000009", "seal_or_lock", "care", "kalmar", False, "cancelled", T0, m(DAY),
                            m(3 * DAY))
    running = OrderRecord("RO-2026-000010", "seal_or_lock", "care", "kalmar", True, "awaiting_callback", T0,
                          m(DAY), callback_due_at=m(30))
    s = statistics([cancelled, running], m(10))
    assert s["sla"]["overdue"] == 0 and s["sla"]["callbacks_within_window"]["n"] == 0


# --- through the database, the API and the page -------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def ad(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapters]:
    """The in-process adapters on an orders database of this module's own (its known set of orders only)."""
    from flows.bootstrap import in_process
    for database in own_database(tmp_path_factory, "statistics", first_reference=700000):
        yield in_process(settings, db=database)


def store(ad: Adapters, r: OrderRecord, prefix: str = "RO-2026-7") -> None:
    """`r` as the routine would have left it in the database: the order, its accepted decisions, the audit rows
    of its final status and execution, its escalation."""
    outcomes = {"callback": "done", "harm_assessment": "do_not_restrict" if r.status == "rejected" else "restrict",
                "approval": "approve", "execution": "done"}
    with ad.db.session() as s:
        o = Order(reference=r.reference.replace("RO-2026-0", prefix), order_type=r.order_type,
                  initiative=r.initiative, actions=[], patient_pnr=pnr().replace("-", ""),
                  care_unit_hsa_id=f"DEMO-{r.region.upper()}-UNIT", region=r.region, status=r.status,
                  submitted_by="DEMO-KALMAR-CLINICIAN", created_at=r.created_at, updated_at=r.created_at,
                  due_at=r.due_at, urgent=r.urgent, callback_due_at=r.callback_due_at, callback_at=r.callback_at,
                  reason="Hot", stage_plan={}, flow_name="seal-or-lock", flow_run_id=str(uuid.uuid4()))
        s.add(o)
        s.flush()
        for stage, at in r.decided.items():
            if stage == "execution":
                audit.record(s, actor="system", action="executed", order=o, at=at)
                continue
            s.add(Decision(order_id=o.id, stage=stage, decided_by="DEMO-KALMAR-ASSESSOR", outcome=outcomes[stage],
                           detail={}, text="", state="accepted", created_at=at))
        if r.final_at is not None:
            audit.record(s, actor="system", action="status", order=o, from_status="executing", to_status=r.status,
                         at=r.final_at)
        if r.escalated:
            s.add(Deviation(order_reference=o.reference, kind="callback_missed", minutes_late=12,
                            at=m(42, r.created_at)))


@pytest.fixture(scope="module")
def app(ad: Adapters) -> Iterator[TestClient]:
    from forms.app import create_app
    from forms.deps import now
    for r in KNOWN:
        store(ad, r)
    application = create_app(ad)
    application.dependency_overrides[now] = lambda: NOW
    with TestClient(application, client=("127.0.0.1", 40002)) as c:
        yield c


ADMIN = {"X-Remote-User": "DEMO-ADMIN"}


def test_api_statistics_of_the_known_set(app: TestClient) -> None:
    r = app.get("/api/admin/statistics", params={"region": "kalmar", "from": "2026-11-01", "to": "2026-11-30"},
                headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("lead_time", "sla", "volume")} == EXPECTED
    assert body["period"] == {"region": "kalmar", "from": "2026-11-01", "to": "2026-11-30"}
    # The period and the region select: week 45 only, another region nothing.
    week = app.get("/api/admin/statistics", params={"from": "2026-11-02", "to": "2026-11-08"}, headers=ADMIN).json()
    assert week["volume"]["total"] == 2 and week["volume"]["by_week"] == {"2026-V45": 2}
    assert app.get("/api/admin/statistics", params={"region": "stockholm", "from": "2026-11-01", "to": "2026-11-30"},
                   headers=ADMIN).json()["volume"]["total"] == 0
    assert app.get("/api/admin/statistics", params={"from": "2026-13-01"}, headers=ADMIN).status_code == 422
    assert app.get("/api/admin/statistics", params={"from": "2026-11-30", "to": "2026-11-01"},
                   headers=ADMIN).status_code == 422
    assert app.get("/api/admin/statistics", headers={"X-Remote-User": "DEMO-KALMAR-HEAD"}).status_code == 403


def test_the_csv_export_has_the_figures_and_no_personal_number_or_reference(app: TestClient) -> None:
    r = app.get("/api/admin/statistics.csv", params={"region": "kalmar", "from": "2026-11-01", "to": "2026-11-30"},
                headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = {(sec, measure): value for sec, measure, value in list(csv.reader(io.StringIO(r.text)))[1:]}
    assert rows[("lead_time", "submit_to_completed.median_minutes")] == "110.0"
    assert rows[("sla", "answered_within_one_working_day.share")] == "0.75"
    assert rows[("volume", "by_week.2026-V46")] == "3"
    assert not re.search(r"(?:\d{6}|\d{8})[-+]?\d{4}", r.text) and "RO-" not in r.text


def test_the_statistics_page_renders_charts_with_tables(app: TestClient) -> None:
    r = app.get("/admin/statistik", params={"region": "kalmar", "from": "2026-11-01", "to": "2026-11-30"},
                headers=ADMIN)
    assert r.status_code == 200, r.text[:500]
    assert r.text.count('role="img"') == 4 and r.text.count("<desc id=") == 4
    assert r.text.count('class="table chart-table"') == 4
    assert "75 %" in r.text and "50 %" in r.text  # answered within a day, callbacks in time
    assert app.get("/admin/statistik", params={"from": "igår"}, headers=ADMIN).status_code == 422


def test_stored_rows_are_what_the_reader_reads(ad: Adapters) -> None:
    from tasks.steps.statistics import records
    with ad.db.session() as s:
        got = {r.reference: r for r in records(s, "kalmar", T0 - timedelta(days=1), NOW)}
        assert len(got) == 5
        b = got["RO-2026-700002"]
        assert b.callback_at == m(20, B0) and b.decided["execution"] == m(110, B0) and b.final_at == m(110, B0)
        assert got["RO-2026-700005"].escalated and not b.escalated
        assert s.scalar(select(Order.status).where(Order.reference == "RO-2026-700004")) == "rejected"
