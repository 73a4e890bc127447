"""The monitoring router on a bare FastAPI() through httpx (FastAPI's TestClient): identity (401/403), the
overview and red list, deviations, reviews due, the CSV export without personal numbers, the patient
log extract, and the head of department's review outcome. Runs on SQLite, and on PostgreSQL when
DATABASE_URL is set.

The orders are made in Region Stockholm in January 2020 and the time is pinned there (the module's adapters
have a FixedClock, which every route's `now` reads), so the overdue figures for Stockholm are exactly this
file's orders. The in-process engine stands in for Prefect: a review's restore order starts its run there.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from forms import admin_routes
from models import personnummer
from models.clock import FixedClock
from models.status import OrderStatus
from models.tables import AuditEvent
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import monitoring
from tests.monitoring_support import (
    audit_rows,
    body,
    execute_at,
    order,
    patient,
    set_status,
    stockholm,
    submit_at,
)

NOW = stockholm(2020, 1, 16, 13, 0)          # Thursday
ADMIN = {"X-Remote-User": "DEMO-ADMIN"}
HEAD = {"X-Remote-User": "DEMO-STOCKHOLM-HEAD"}
CLINICIAN = {"X-Remote-User": "DEMO-STOCKHOLM-CLINICIAN"}
# A number written the way people write them: 10 or 12 digits, with or without - or +.
NUMBER_SHAPED = re.compile(r"(?<![0-9])(\d{6}|\d{8})[-+]?(\d{4})(?![0-9])")


@pytest.fixture(scope="module")
def ad(settings: Settings, db: Database) -> Adapters:
    """This module's adapters: the session's orders database, the in-process engine, the time pinned at NOW
    (every route's `now` and every step's clock)."""
    from flows.bootstrap import in_process
    return in_process(settings, db=db, clock=FixedClock(NOW))


@pytest.fixture(scope="module")
def data(ad: Adapters) -> dict[str, Any]:
    """Stockholm orders: two overdue, one open not yet due, one cancelled (was due), one executed with a
    review due, one executed whose review is not due yet."""
    patients = [patient() for _ in range(6)]
    late1 = submit_at(ad, stockholm(2020, 1, 14, 10, 0), body(patients[0], region="stockholm"))
    late2 = submit_at(ad, stockholm(2020, 1, 14, 11, 0), body(patients[1], region="stockholm", urgent=True))
    fresh = submit_at(ad, stockholm(2020, 1, 16, 12, 0), body(patients[2], region="stockholm"))
    gone = submit_at(ad, stockholm(2020, 1, 13, 10, 0), body(patients[3], region="stockholm"))
    set_status(ad, gone, OrderStatus.CANCELLED, stockholm(2020, 1, 13, 11, 0))
    due_review = submit_at(ad, stockholm(2019, 1, 8, 10, 0), body(patients[4], region="stockholm"))
    execute_at(ad, stockholm(2019, 1, 8, 12, 0), due_review)
    later_review = submit_at(ad, stockholm(2019, 6, 4, 10, 0), body(patients[5], region="stockholm"))
    execute_at(ad, stockholm(2019, 6, 4, 12, 0), later_review)
    monitoring.flag_overdue(ad, NOW, references=[late1, late2, fresh, gone])
    return {"late": [late1, late2], "fresh": fresh, "gone": gone, "due_review": due_review,
            "later_review": later_review, "patients": patients}


def bare_app(ad: Adapters) -> FastAPI:
    """The monitoring router alone, with the adapters where the app keeps them (`create_app` does the same)."""
    app = FastAPI()
    app.state.adapters = ad
    app.include_router(admin_routes.router)
    return app


@pytest.fixture(scope="module")
def client(ad: Adapters) -> Iterator[TestClient]:
    app = bare_app(ad)
    # The SSO proxy's address: X-Remote-User is trusted only from there (loopback by default).
    with TestClient(app, client=("127.0.0.1", 50000)) as c:
        yield c


def no_numbers(text: str, patients: list[str]) -> None:
    for pnr in patients:
        digits = pnr.replace("-", "")
        for form in (pnr, digits, digits[2:], pnr[2:]):
            assert form not in text
    for m in NUMBER_SHAPED.finditer(text):
        with pytest.raises(personnummer.InvalidPersonalNumber):
            personnummer.parse(m.group(0), date(2026, 1, 1))


# --- identity ---------------------------------------------------------------------------------------------

GETS = ["/admin", "/admin/avvikelser", "/admin/omprovningar", "/admin/logg", "/api/admin/overview",
        "/api/admin/overdue", "/api/admin/deviations", "/api/admin/reviews", "/api/admin/orders.csv"]


@pytest.mark.parametrize("path", GETS)
def test_no_identity_is_401_and_a_non_admin_is_403(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"X-Remote-User": "NOBODY"}).status_code == 401
    r = client.get(path, headers=CLINICIAN)
    assert r.status_code == 403
    assert r.json()["detail"]["errors"][0]["code"] == "wrong_role"
    assert client.get(path, headers=ADMIN).status_code == 200


def test_the_header_counts_only_from_the_trusted_proxy(ad: Adapters, data: dict[str, Any]) -> None:
    with TestClient(bare_app(ad), client=("203.0.113.7", 40000)) as outsider:
        assert outsider.get("/api/admin/overview", headers=ADMIN).status_code == 401


def test_posts_need_identity_and_role(ad: Adapters, client: TestClient, data: dict[str, Any]) -> None:
    ref = data["due_review"]
    assert client.post("/api/admin/patient-log", json={"personal_number": data["patients"][0]}).status_code == 401
    assert client.post("/api/admin/patient-log", json={"personal_number": data["patients"][0]},
                       headers=HEAD).status_code == 403
    assert client.post(f"/api/orders/{ref}/review", json={"outcome": "keep"}).status_code == 401
    for who in (CLINICIAN, ADMIN, {"X-Remote-User": "DEMO-KALMAR-HEAD"}):
        assert client.post(f"/api/orders/{ref}/review", json={"outcome": "keep"}, headers=who).status_code == 403
    assert audit_rows(ad, ref, "review_kept") == []


# --- overview, red list, deviations, reviews -------------------------------------------------------------

def test_overview_counts_and_the_red_list(client: TestClient, data: dict[str, Any]) -> None:
    r = client.get("/api/admin/overview", params={"region": "stockholm"}, headers=ADMIN)
    assert r.status_code == 200
    got = r.json()
    # longest overdue first: the urgent one was due 4 hours after it came in (its urgent target, issue 13)
    assert [o["reference"] for o in got["overdue"]] == data["late"][::-1]
    assert got["overdue_total"] == 2
    assert got["by_region"]["stockholm"] >= 3 and set(got["by_region"]) == {"stockholm"}
    first = got["overdue"][1]
    assert first["overdue"] is True and first["minutes_late"] == 27 * 60
    assert first["due_at"] == "2020-01-15T10:00:00+01:00"
    assert got["overdue"][0]["due_at"] == "2020-01-14T15:00:00+01:00" and got["overdue"][0]["urgent"] is True
    assert set(first) == {"reference", "order_type", "initiative", "region", "care_unit_hsa_id", "status", "urgent",
                          "created_at", "due_at", "overdue", "minutes_late"}
    cells = {(c["region"], c["status"]): c for c in got["counts"]}
    assert cells[("stockholm", "submitted")]["overdue"] == 2
    assert got["deviations_total"] >= 1 and got["reviews_due_total"] >= 1
    no_numbers(r.text, data["patients"])

    only = client.get("/api/admin/overdue", params={"region": "stockholm", "status": "awaiting_approval"},
                      headers=ADMIN).json()
    assert only == {"orders": []}
    for bad in ({"region": "uppsala"}, {"status": "overdue"}):
        r = client.get("/api/admin/overview", params=bad, headers=ADMIN)
        assert r.status_code == 422 and r.json()["errors"][0]["code"] == "invalid_value"


def test_the_overview_page_is_swedish_accessible_and_marks_overdue_in_words(client: TestClient,
                                                                          data: dict[str, Any]) -> None:
    r = client.get("/admin?region=stockholm", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<html lang="sv">' in html
    assert html.count("<caption") >= 2 and 'scope="col"' in html and 'scope="row"' in html
    for ref in data["late"]:
        row = html[html.index(f">{ref}</a>") - 200: html.index(f">{ref}</a>") + 900]
        assert 'class="overdue"' in row and "Försenad" in row       # red, and said in words
    assert data["fresh"] not in html.split("Röda listan")[1].split("</table>")[0]
    assert '<option value="stockholm" selected>' in html
    no_numbers(html, data["patients"])
    assert client.get("/admin?status=nonsense", headers=ADMIN).status_code == 422


def test_deviations_and_reviews_due(client: TestClient, data: dict[str, Any]) -> None:
    devs = client.get("/api/admin/deviations", params={"region": "stockholm"}, headers=ADMIN).json()["deviations"]
    # Both missed their due time (the urgent one its execution target, not its callback deadline: a missed
    # callback is the escalation dispatcher's `callback_missed`, not run here).
    assert [d["kind"] for d in devs if d["reference"] in data["late"]] == ["overdue", "overdue"]
    assert data["late"][0] in {d["reference"] for d in devs}
    reviews = client.get("/api/admin/reviews", params={"region": "stockholm"}, headers=ADMIN).json()["reviews"]
    refs = [x["reference"] for x in reviews]
    assert data["due_review"] in refs and data["later_review"] not in refs
    for path in ("/admin/avvikelser?region=stockholm", "/admin/omprovningar?region=stockholm"):
        html = client.get(path, headers=ADMIN).text
        assert '<html lang="sv">' in html and "<caption>" in html
        no_numbers(html, data["patients"])
    assert data["due_review"] in client.get("/admin/omprovningar", headers=ADMIN).text


# --- CSV -------------------------------------------------------------------------------------------------

def test_csv_export_has_the_columns_and_no_personal_numbers(ad: Adapters, client: TestClient,
                                                            data: dict[str, Any]) -> None:
    r = client.get("/api/admin/orders.csv", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["reference", "type", "region", "unit", "status", "urgent", "created", "due", "overdue"]
    by_ref = {row["reference"]: row for row in rows}
    late = by_ref[data["late"][1]]
    assert (late["type"], late["region"], late["unit"], late["status"], late["urgent"], late["overdue"]) == \
        ("seal_or_lock", "stockholm", "DEMO-STOCKHOLM-UNIT", "submitted", "true", "true")
    assert by_ref[data["gone"]]["overdue"] == "false" and by_ref[data["fresh"]]["overdue"] == "false"
    no_numbers(r.text, data["patients"])

    only_late = client.get("/api/admin/orders.csv", params={"region": "stockholm", "overdue": "true"}, headers=ADMIN)
    assert sorted(row["reference"] for row in csv.DictReader(io.StringIO(only_late.text))) == sorted(data["late"])
    with ad.db.session() as s:
        exports = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "orders_exported",
                                                          AuditEvent.actor == "DEMO-ADMIN")))
    assert exports and exports[-1].detail["rows"] == 2 and exports[-1].patient_pnr is None


def test_csv_export_streams_every_row_past_one_batch_with_the_filters_in_sql(ad: Adapters, client: TestClient,
                                                                              data: dict[str, Any],
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No limit any more, and `overdue` filters in SQL before anything is read: with a batch of 2 rows the
    export of Stockholm (this file's orders and more) comes in several chunks and has every row."""
    from sqlalchemy import func

    from models.tables import Order
    with ad.db.session() as s:
        expected = set(s.scalars(select(Order.reference).where(Order.region == "stockholm")))
        total = int(s.scalar(select(func.count()).select_from(Order).where(Order.region == "stockholm")) or 0)
    assert total == len(expected) > 2 * 2
    chunks = list(admin_routes.orders_csv(ad, NOW, admin_routes.Filters(region="stockholm"), None, batch=2))
    assert len(chunks) == 1 + -(-total // 2)  # the header, then one chunk per batch of two
    rows = list(csv.DictReader(io.StringIO("".join(chunks))))
    assert {r["reference"] for r in rows} == expected and len(rows) == total
    created = [datetime.fromisoformat(r["created"]) for r in rows]
    assert created == sorted(created, reverse=True)  # newest first, across batches
    no_numbers("".join(chunks), data["patients"])

    late = list(csv.DictReader(io.StringIO("".join(
        admin_routes.orders_csv(ad, NOW, admin_routes.Filters(region="stockholm"), True, batch=1)))))
    on_time = list(csv.DictReader(io.StringIO("".join(
        admin_routes.orders_csv(ad, NOW, admin_routes.Filters(region="stockholm"), False, batch=1)))))
    assert sorted(r["reference"] for r in late) == sorted(data["late"])
    assert {r["overdue"] for r in late} == {"true"} and {r["overdue"] for r in on_time} == {"false"}
    assert len(late) + len(on_time) == total

    monkeypatch.setattr(monitoring, "EXPORT_BATCH", 3)  # through the route: streamed, every row, audited
    r = client.get("/api/admin/orders.csv", params={"region": "stockholm"}, headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert {row["reference"] for row in csv.DictReader(io.StringIO(r.text))} == expected
    no_numbers(r.text, data["patients"])
    with ad.db.session() as s:
        last = s.scalars(select(AuditEvent).where(AuditEvent.action == "orders_exported")
                         .order_by(AuditEvent.id.desc())).first()
    assert last is not None and last.detail["rows"] == total and last.detail["region"] == "stockholm"


def test_csv_cells_never_start_a_formula() -> None:
    assert admin_routes._cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert admin_routes._cell("@SUM") == "'@SUM" and admin_routes._cell("RO-2020-000001") == "RO-2020-000001"


# --- patient log extract ----------------------------------------------------------------------------------

def test_the_patient_log_extract_logs_the_search(ad: Adapters, client: TestClient, data: dict[str, Any]) -> None:
    pnr = data["patients"][0]
    r = client.post("/api/admin/patient-log", json={"personal_number": pnr}, headers=ADMIN)
    assert r.status_code == 200
    got = r.json()
    assert got["orders"] == [data["late"][0]]
    assert {e["order_reference"] for e in got["events"]} == {data["late"][0], None}
    assert got["patient"].endswith("-****") and pnr not in r.text and pnr.replace("-", "") not in r.text
    with ad.db.session() as s:
        searches = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "search_by_personal_number",
                                                           AuditEvent.patient_pnr == pnr.replace("-", ""))))
    assert [(e.actor, e.at) for e in searches] == [("DEMO-ADMIN", NOW)]
    bad = client.post("/api/admin/patient-log", json={"personal_number": "19121212-1213"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["code"] == "invalid_personal_number"
    form = client.post("/api/admin/patient-log", data={"personal_number": pnr}, headers=ADMIN)
    assert form.status_code in (415, 422)


def test_the_patient_log_page_posts_the_number_in_the_body_with_csrf(client: TestClient,
                                                                     data: dict[str, Any]) -> None:
    page = client.get("/admin/logg", headers=ADMIN)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    pnr = data["patients"][1]
    assert client.post("/admin/logg/patient", data={"personal_number": pnr}, headers=ADMIN).status_code == 403
    r = client.post("/admin/logg/patient", data={"personal_number": pnr, "csrf_token": token.group(1)},
                    headers=ADMIN)
    assert r.status_code == 200
    assert data["late"][1] in r.text and "Sökning på personnummer" in r.text
    assert pnr not in r.text and pnr.replace("-", "")[:8] + "-****" in r.text
    assert '<html lang="sv">' in r.text and "<caption>" in r.text
    bad = client.post("/admin/logg/patient", data={"personal_number": "nonsense", "csrf_token": token.group(1)},
                      headers=ADMIN)
    assert bad.status_code == 422 and 'aria-invalid="true"' in bad.text and "error-summary" in bad.text
    sample = client.post("/admin/logg/stickprov", data={"days": "400", "size": "5", "csrf_token": token.group(1)},
                         headers=ADMIN)
    assert sample.status_code == 200 and "Resultat av stickprovet" in sample.text


def test_the_sample_check_api(client: TestClient, data: dict[str, Any]) -> None:
    r = client.post("/api/admin/sample-check", json={"days": 30, "size": 3, "seed": 7}, headers=ADMIN)
    assert r.status_code == 200
    got = r.json()
    assert got["seed"] == 7 and len(got["sampled"]) <= 3
    assert client.post("/api/admin/sample-check", json={"size": 0}, headers=ADMIN).status_code == 422


# --- review outcome ---------------------------------------------------------------------------------------

def started(ad: Adapters) -> list[str]:
    """The orders whose runs this module's in-process engine started."""
    from flows.inprocess import InProcessEngine
    assert isinstance(ad.engine, InProcessEngine)
    return [run.reference for run in ad.engine.runs.values()]


def test_the_head_records_keep_and_restore(ad: Adapters, client: TestClient) -> None:
    keep = submit_at(ad, stockholm(2019, 1, 15, 10, 0), body(patient(), region="stockholm"))
    execute_at(ad, stockholm(2019, 1, 15, 12, 0), keep)
    r = client.post(f"/api/orders/{keep}/review", json={"outcome": "keep"}, headers=HEAD)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "keep" and r.json()["restore_reference"] is None
    assert datetime.fromisoformat(r.json()["review_due_on"]) == NOW + timedelta(days=365)
    again = client.post(f"/api/orders/{keep}/review", json={"outcome": "keep"}, headers=HEAD)
    assert again.status_code == 409 and again.json()["errors"][0]["code"] == "review_not_due"

    restore = submit_at(ad, stockholm(2019, 1, 15, 10, 0), body(patient(), region="stockholm"))
    execute_at(ad, stockholm(2019, 1, 15, 12, 0), restore)
    r = client.post(f"/api/orders/{restore.lower()}/review", json={"outcome": "restore"}, headers=HEAD)
    assert r.status_code == 200, r.text
    new = r.json()["restore_reference"]
    assert order(ad, new).order_type == "restore_access" and started(ad) == [new]

    assert client.post("/api/orders/RO-2019-999999/review", json={"outcome": "keep"}, headers=HEAD).status_code == 404
    assert client.post(f"/api/orders/{keep}/review", json={"outcome": "maybe"}, headers=HEAD).status_code == 422
    assert client.post(f"/api/orders/{keep}/review", data={"outcome": "keep"}, headers=HEAD).status_code in (415, 422)


def test_the_head_review_page(ad: Adapters, client: TestClient, data: dict[str, Any]) -> None:
    runs_before = started(ad)
    ref = submit_at(ad, stockholm(2019, 1, 9, 10, 0), body(patient(), region="stockholm"))
    execute_at(ad, stockholm(2019, 1, 9, 12, 0), ref)
    page = client.get("/omprovningar", headers=HEAD)
    assert page.status_code == 200 and ref in page.text and '<html lang="sv">' in page.text
    assert client.get("/omprovningar", headers={"X-Remote-User": "DEMO-KALMAR-HEAD"}).text.count(ref) == 0
    assert client.get("/omprovningar", headers=ADMIN).status_code == 403
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    missing = client.post(f"/omprovningar/{ref}", data={"csrf_token": token.group(1)}, headers=HEAD)
    assert missing.status_code == 422 and "error-summary" in missing.text
    done = client.post(f"/omprovningar/{ref}", data={"outcome": "keep", "csrf_token": token.group(1)}, headers=HEAD,
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/omprovningar?klar={ref}&utfall=keep"
    after = client.get(done.headers["location"], headers=HEAD)
    assert "är registrerad" in after.text and f">{ref}</a>" not in after.text
    assert [e.actor for e in audit_rows(ad, ref, "review_kept")] == ["DEMO-STOCKHOLM-HEAD"]
    assert started(ad) == runs_before  # keep starts nothing
