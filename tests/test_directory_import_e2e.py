"""End to end: a region's staff file is imported with the command line, then the imported people work through
the API with real Prefect runs behind it: the imported clinician orders, the imported assessor decides. The
people the import deactivated can no longer act. Also a guardian's protected identity through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from forms import cli
from models.tables import AuditEvent, Order, Staff
from tasks.adapters import Adapters

pytest.register_assert_rewrite("tests.webapp")
from tests.webapp import body, born_years_ago, pnr, staff, wait_status  # noqa: E402

pytest_plugins = ["tests.webapp"]

ORG = "SE1234567890"  # a made-up catalogue owner
UNIT, HEAD, DOC, ASSESSOR = (f"{ORG}-{x}" for x in ("E2EUNIT", "E2EHEAD", "E2EDOC", "E2EASSESSOR"))
ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 180}


def codes(r: httpx.Response) -> set[str]:
    return {e["code"] for e in r.json()["errors"]}


@pytest.fixture
def imported_stockholm(prefect_ad: Adapters, flow_server: Any, tmp_path: Path) -> Iterator[None]:
    """Region Stockholm's staff as its HSA export gives them. The import deactivates the demo's Stockholm
    people (they are not in the file); they are made active again afterwards for the session's other tests."""
    staff_csv = tmp_path / "stockholm-staff.csv"
    staff_csv.write_text(
        "hsa_id,name,email,phone,roles,care_unit_hsa_id,region,active\n"
        f"{HEAD},Helena Verksamhetschef,helena@stockholm.example.invalid,08-123 456,head_of_department,{UNIT},stockholm,true\n"
        f"{DOC},Daniel Läkare,daniel@stockholm.example.invalid,08-123 457,clinician,{UNIT},stockholm,true\n"
        f"{ASSESSOR},Astrid Menprövare,astrid@stockholm.example.invalid,,assessor,{UNIT},stockholm,true\n",
        encoding="utf-8")
    units_csv = tmp_path / "stockholm-units.csv"
    units_csv.write_text(f"hsa_id,name,region,head_hsa_id\n{UNIT},Husläkarmottagningen Test,stockholm,{HEAD}\n",
                         encoding="utf-8")
    try:
        assert cli.main(["directory", "import", "--staff", str(staff_csv), "--units", str(units_csv)],
                        ad=prefect_ad) == 0
        yield
    finally:
        with prefect_ad.db.session() as s:
            s.execute(update(Staff).where(Staff.hsa_id.like("DEMO-STOCKHOLM-%")).values(active=True))


@pytest.mark.e2e
def test_the_imported_assessor_decides_an_order(api_e2e: Any, prefect_ad: Adapters,
                                                imported_stockholm: None) -> None:
    api = api_e2e
    with prefect_ad.db.session() as s:
        demo_assessor = s.get(Staff, staff("assessor", "stockholm"))
        assert demo_assessor is not None and not demo_assessor.active
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.action == "directory_staff_add",
                                                    AuditEvent.detail["hsa_id"].as_string() == ASSESSOR))
    r = api(DOC).post("/api/orders", json=body(care_unit_hsa_id=UNIT, region="stockholm"))
    assert r.status_code == 201, r.text
    ref = r.json()["reference"]
    reader = api(DOC)
    wait_status(reader, ref, "awaiting_assessment")

    # The demo assessor the import deactivated is nobody now.
    gone = api(staff("assessor", "stockholm")).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert gone.status_code in (401, 403), gone.text

    r = api(ASSESSOR).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert r.status_code == 202, r.text
    assert wait_status(reader, ref, "awaiting_approval") == "awaiting_approval"
    # The imported head of the imported unit is the one who approves it.
    r = api(HEAD).post(f"/api/orders/{ref}/approval", json={"approved": True, "comment": "ok"})
    assert r.status_code == 202, r.text
    assert wait_status(reader, ref, "executing", "completed") in ("executing", "completed")
    with prefect_ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None and order.submitted_by == DOC
        assert {d.decided_by for d in order.decisions} >= {ASSESSOR, HEAD}


def test_a_protected_guardian_through_the_api(api: Any, ad: Adapters) -> None:
    c = api(staff("clinician"))
    grant = body("minor_access", guardian_personal_number=pnr(born_years_ago(45)), guardian_protected_identity=True,
                 minor_access={"grant": True, "recipient": "guardian", "child_consent": True})
    for path in ("/api/orders/validate", "/api/orders"):
        r = c.post(path, json=grant)
        assert r.status_code == 422, r.text
        assert {"field": "guardian_personal_number", "code": "protected_identity"} in [
            {"field": e["field"], "code": e["code"]} for e in r.json()["errors"]]
    block = body("block_guardian", guardian_protected_identity=True)
    v = c.post("/api/orders/validate", json=block)
    assert v.status_code == 200 and "protected_identity" in {w["code"] for w in v.json()["warnings"]}
    r = c.post("/api/orders", json=block)
    assert r.status_code == 201 and "protected_identity" in {w["code"] for w in r.json()["warnings"]}
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == r.json()["reference"]))
        assert order is not None and order.guardian_protected
