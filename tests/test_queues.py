"""The work queues and "my orders" against a database of their own, through the real app in-process (no
Prefect: these pages only read the orders database): who sees which order, the limit taken after the
region and unit filters, red by the one rule of models.sla, and one audited read per order listed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from forms.pages import queues as pages
from models.tables import AuditEvent, CareUnit, Order, Staff
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import orders
from tests.conftest import own_database
from tests.webapp import pnr

CLINICIAN = "DEMO-KALMAR-CLINICIAN"
ASSESSOR, HEAD, BAKJOUR = "DEMO-KALMAR-ASSESSOR", "DEMO-KALMAR-HEAD", "DEMO-KALMAR-BAKJOUR"
OTHER_UNIT, OTHER_HEAD = "TEST-KALMAR-QUEUEUNIT", "TEST-KALMAR-QUEUEHEAD"
NOW = datetime.now(UTC)
FILLER = pages.QUEUE_LIMIT + 5  # more than one page of orders this person may not decide on
_serial = iter(range(10**6))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "queues", first_reference=600000)


@pytest.fixture(scope="module", autouse=True)
def ad(settings: Settings, db: Database) -> Adapters:
    """This module's adapters: its own orders database, the in-process engine (the pages never start a run)."""
    from flows.bootstrap import in_process
    return in_process(settings, db=db)


@pytest.fixture(scope="module")
def app(ad: Adapters) -> Iterator[TestClient]:
    from forms.app import create_app
    with ad.db.session() as s:
        s.add(CareUnit(hsa_id=OTHER_UNIT, name="Andra enheten Kalmar", region="kalmar", head_hsa_id=OTHER_HEAD))
        s.add(Staff(hsa_id=OTHER_HEAD, name="Andra chefen", email="queuehead@kalmar.invalid",
                    roles=["head_of_department"], unit_hsa_id=OTHER_UNIT, region="kalmar", active=True))
    with TestClient(create_app(ad), client=("127.0.0.1", 40001)) as c:  # loopback: the trusted proxy
        yield c


def _row(status: str, *, region: str = "kalmar", unit: str = "DEMO-KALMAR-UNIT", due: datetime | None = None,
         approval_role: str = "head_of_department", submitted_by: str = CLINICIAN) -> Order:
    """An order row as its run leaves it at `status` (no run: these pages never call Prefect)."""
    return Order(reference=f"RO-{NOW.year}-{600000 + 1000 + next(_serial):06d}", order_type="seal_or_lock",
                 initiative="care", actions=["seal_journal"], patient_pnr=pnr().replace("-", ""),
                 care_unit_hsa_id=unit, region=region, status=status, submitted_by=submitted_by, created_at=NOW,
                 updated_at=NOW, due_at=due or NOW + timedelta(days=1), reason="Hot mot patienten",
                 stage_plan={"approval": {"required": True, "role": approval_role, "reason": "Vårdens initiativ"}},
                 flow_name="seal-or-lock", flow_run_id=str(uuid.uuid4()))


def add_order(ad: Adapters, status: str, **kw: Any) -> str:
    return bulk(ad, 1, status, due=kw.pop("due", None) or NOW + timedelta(days=1), **kw)[0]


def bulk(ad: Adapters, n: int, status: str, *, due: datetime | None = None, **kw: Any) -> list[str]:
    """`n` orders, due before everything else by default: first in the queue's order."""
    rows = [_row(status, due=due or NOW - timedelta(days=3), **kw) for _ in range(n)]
    with ad.db.session() as s:
        s.add_all(rows)
        return [o.reference for o in rows]


def listed(page: str) -> set[str]:
    return set(re.findall(r'<(?:section|tr) class="queue-item[^"]*" id="(RO-\d{4}-\d+)"', page))


def reads(ad: Adapters, ref: str, via: str) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.order_reference == ref, AuditEvent.action == "order_read",
            AuditEvent.detail["via"].as_string() == via)) or 0)


def get(app: TestClient, path: str, user: str) -> str:
    r = app.get(path, headers={"X-Remote-User": user})
    assert r.status_code == 200, r.text[:500]
    return r.text


def test_the_limit_comes_after_the_region_filter(ad: Adapters, app: TestClient) -> None:
    others = bulk(ad, FILLER, "awaiting_assessment", region="ostergotland", unit="DEMO-OSTERGOTLAND-UNIT")
    mine = add_order(ad, "awaiting_assessment")
    page = get(app, "/ko/menprovning", ASSESSOR)
    assert mine in listed(page) and not listed(page) & set(others)
    assert len(listed(get(app, "/ko/menprovning", "DEMO-OSTERGOTLAND-ASSESSOR"))) == pages.QUEUE_LIMIT


def test_approvals_are_filtered_by_unit_and_by_the_plan_s_approver(ad: Adapters, app: TestClient) -> None:
    others = bulk(ad, FILLER, "awaiting_approval", unit=OTHER_UNIT)
    mine = add_order(ad, "awaiting_approval")
    out_of_hours = add_order(ad, "awaiting_approval", approval_role="bakjour")
    head = listed(get(app, "/ko/godkannande", HEAD))
    assert mine in head and out_of_hours not in head and not head & set(others)
    other_head = listed(get(app, "/ko/godkannande", OTHER_HEAD))
    assert mine not in other_head and len(other_head) == pages.QUEUE_LIMIT
    bakjour = listed(get(app, "/ko/godkannande", BAKJOUR))
    assert out_of_hours in bakjour and mine not in bakjour
    assert out_of_hours not in listed(get(app, "/ko/godkannande", "DEMO-STOCKHOLM-BAKJOUR"))


def test_every_listed_order_is_an_audited_read(ad: Adapters, app: TestClient) -> None:
    ref = add_order(ad, "awaiting_assessment", region="jonkoping", unit="DEMO-JONKOPING-UNIT")
    with ad.db.session() as s:
        before = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    page = get(app, "/ko/menprovning", "DEMO-JONKOPING-ASSESSOR")
    assert listed(page) == {ref} and reads(ad, ref, "queue") == 1
    with ad.db.session() as s:
        added = s.scalars(select(AuditEvent).order_by(AuditEvent.id).offset(before)).all()
    assert [(e.action, e.actor, e.order_reference) for e in added] == [("order_read", "DEMO-JONKOPING-ASSESSOR", ref)]
    assert added[0].patient_pnr  # the log knows whose data was shown


def test_my_orders_logs_a_read_per_order_and_is_red_by_the_sla_rule(ad: Adapters, app: TestClient) -> None:
    clinician = "DEMO-STOCKHOLM-CLINICIAN"
    past = NOW - timedelta(hours=2)
    late = add_order(ad, "awaiting_assessment", region="stockholm", unit="DEMO-STOCKHOLM-UNIT", due=past,
                     submitted_by=clinician)
    failed = add_order(ad, "failed", region="stockholm", unit="DEMO-STOCKHOLM-UNIT", due=past, submitted_by=clinician)
    page = get(app, "/bestallningar", clinician)
    rows: dict[str, str] = {}
    for ref in (late, failed):
        row = re.search(rf'<a href="/bestallningar/{ref}">.*?</tr>', page, re.S)
        assert row, ref
        rows[ref] = row.group(0)
    assert "Försenad" in rows[late] and "Försenad" not in rows[failed]
    assert reads(ad, late, "list") == 1 and reads(ad, failed, "list") == 1
    # The order page decides red by the same rule.
    assert "Försenad" not in get(app, f"/bestallningar/{failed}", clinician)
    assert "Försenad" in get(app, f"/bestallningar/{late}", clinician)


def test_a_failed_order_is_final_and_never_late(ad: Adapters) -> None:
    with ad.db.session() as s:
        o = s.scalar(select(Order).where(Order.status == "failed"))
        assert o is not None and o.due_at is not None and o.due_at < NOW
        assert orders.overdue(o, NOW) is False
