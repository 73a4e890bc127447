"""Issue 16, part 4: paper and region rules, refusals in the audit log, logout on the server, and free text
without direction overrides. Against the real app in-process (ASGI) with the in-process engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from models.clock import STOCKHOLM
from models.rules import RuleContext, check_order
from models.tables import AuditEvent, Order, Staff
from models.text import BIDI_CONTROLS, has_bidi_control
from tasks.adapters import Adapters
from tests.e2e import PATIENT, aged, body
from tests.webapp import stored_order

KALMAR_CLINICIAN, KALMAR_SUPPORT = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-SUPPORT"
STOCKHOLM_CLINICIAN = "DEMO-STOCKHOLM-CLINICIAN"
INACTIVE_CLINICIAN = "TEST-TRUST-INACTIVE"


@pytest.fixture()
def web(ad: Adapters) -> Iterator[TestClient]:
    from forms.app import create_app
    with TestClient(create_app(ad), client=("127.0.0.1", 40016), raise_server_exceptions=False) as c:
        yield c


def post(web: TestClient, url: str, user: str, json: Any) -> Response:
    return web.post(url, json=json, headers={"X-Remote-User": user})


def codes(r: Response) -> dict[str, str]:
    return {e["field"]: e["code"] for e in r.json()["errors"]}


def messages(r: Response) -> dict[str, str]:
    return {e["field"]: e["message"] for e in r.json()["errors"]}


def today() -> str:
    return datetime.now(STOCKHOLM).date().isoformat()


def paper(b: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**b, "received_on": today(), "signature_checked": True, **extra}


def refusals(ad: Adapters, actor: str, after: int) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "decision_refused",
                                                       AuditEvent.actor == actor, AuditEvent.id > after)))


def last_audit_id(ad: Adapters) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0)


# --- paper orders: who may be named as orderer -----------------------------------------------------------

@pytest.fixture(scope="module")
def inactive_clinician(ad: Adapters) -> str:
    with ad.db.session() as s:
        if s.get(Staff, INACTIVE_CLINICIAN) is None:
            s.add(Staff(hsa_id=INACTIVE_CLINICIAN, name="Slutat", email="slutat@kalmar.invalid", roles=["clinician"],
                        unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar", active=False))
    return INACTIVE_CLINICIAN


def test_a_paper_order_names_only_an_active_clinician_of_its_region_as_orderer(
        web: TestClient, ad: Adapters, inactive_clinician: str) -> None:
    b = body("seal_or_lock", patient_personal_number=aged(52, 417))
    for orderer, code in (("DEMO-KALMAR-ASSESSOR", "orderer_not_clinician"),
                          ("DEMO-KALMAR-HEAD", "orderer_not_clinician"),
                          ("DEMO-ADMIN", "orderer_not_clinician"),
                          (STOCKHOLM_CLINICIAN, "orderer_other_region"),
                          (inactive_clinician, "unknown_staff")):
        r = post(web, "/api/paper-orders", KALMAR_SUPPORT, paper(b, orderer_hsa_id=orderer))
        assert r.status_code == 422, (orderer, r.text)
        assert codes(r) == {"orderer_hsa_id": code}, orderer
        assert messages(r)["orderer_hsa_id"].startswith(("Beställaren", "Personen")), r.text
    ok = post(web, "/api/paper-orders", KALMAR_SUPPORT, paper(b, orderer_hsa_id=KALMAR_CLINICIAN))
    assert ok.status_code == 201, ok.text
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ok.json()["reference"]))
        assert order is not None
        assert (order.submitted_by, order.paper_registered_by) == (KALMAR_CLINICIAN, KALMAR_SUPPORT)
    # The Stockholm clinician named on the refused forms can read none of Kalmar's orders.
    assert web.get(f"/api/orders/{ok.json()['reference']}", headers={"X-Remote-User": STOCKHOLM_CLINICIAN}
                   ).status_code == 403


def test_a_paper_order_is_registered_by_support_of_its_region_only(web: TestClient) -> None:
    b = paper(body("seal_or_lock", patient_personal_number=aged(53, 418)), orderer_hsa_id=KALMAR_CLINICIAN)
    other = post(web, "/api/paper-orders", "DEMO-STOCKHOLM-SUPPORT", b)
    assert other.status_code == 403 and codes(other) == {"": "other_region"}


# --- a clinician orders for their own region's units ------------------------------------------------------

def test_a_clinician_orders_only_for_care_units_of_their_own_region(web: TestClient, ad: Adapters) -> None:
    b = body("seal_or_lock", region="kalmar", patient_personal_number=aged(41, 419))
    for url in ("/api/orders/validate", "/api/orders", "/api/paper-forms/seal_or_lock.pdf"):
        r = post(web, url, STOCKHOLM_CLINICIAN, b)
        assert r.status_code == 422, (url, r.text)
        assert codes(r)["care_unit_hsa_id"] == "care_unit_other_region", url
        assert messages(r)["care_unit_hsa_id"] == "Du kan bara beställa för vårdenheter i din egen region."
    own = post(web, "/api/orders/validate", STOCKHOLM_CLINICIAN, body("seal_or_lock", region="stockholm"))
    assert own.status_code == 200, own.text
    assert post(web, "/api/orders/validate", KALMAR_CLINICIAN, b).status_code == 200


def test_the_rule_engine_checks_the_orderers_region() -> None:
    now = datetime(2026, 12, 1, 10, tzinfo=STOCKHOLM)
    from models.calendar import WorkingHours
    hours = {"kalmar": WorkingHours(), "stockholm": WorkingHours()}
    units = {"DEMO-KALMAR-UNIT": "kalmar"}
    raw = body("seal_or_lock")
    other = check_order(raw, RuleContext(now=now, care_units=units, region_hours=hours, orderer_region="stockholm"))
    assert [(e.field, e.code) for e in other.errors] == [("care_unit_hsa_id", "care_unit_other_region")]
    for region in ("kalmar", None):
        assert check_order(raw, RuleContext(now=now, care_units=units, region_hours=hours,
                                            orderer_region=region)).ok


# --- region before status: 403 before 409 ------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "status", "actor"), [
    ("execution", "completed", "DEMO-OSTERGOTLAND-ACCOUNTADMIN"),
    ("execution", "awaiting_assessment", "DEMO-OSTERGOTLAND-ACCOUNTADMIN"),
    ("assessment", "completed", "DEMO-STOCKHOLM-ASSESSOR"),
    ("approval", "awaiting_assessment", "DEMO-JONKOPING-HEAD"),
    ("callback", "completed", "DEMO-STOCKHOLM-ONCALL"),
])
def test_another_regions_decider_gets_403_before_the_status_conflict(web: TestClient, ad: Adapters, stage: str,
                                                                     status: str, actor: str) -> None:
    ref = stored_order(ad, status)
    decisions = {"execution": {"system_reference": "X-1"}, "callback": {"note": "Ringt"},
                 "approval": {"approved": True, "comment": ""},
                 "assessment": {"harm_found": True, "decision": "restrict", "rationale": "Skäl"}}
    r = post(web, f"/api/orders/{ref}/{stage}", actor, decisions[stage])
    assert r.status_code == 403, r.text
    assert codes(r)[""] in ("other_region", "other_unit"), r.text
    # Their own region's decider still learns about the status (409).
    own = {"execution": "DEMO-KALMAR-ACCOUNTADMIN", "assessment": "DEMO-KALMAR-ASSESSOR",
           "approval": "DEMO-KALMAR-HEAD", "callback": "DEMO-KALMAR-ONCALL"}[stage]
    if status == "completed":
        assert post(web, f"/api/orders/{ref}/{stage}", own, decisions[stage]).status_code == 409


# --- refusals at the role gate are audited -----------------------------------------------------------------

def test_refusals_at_the_role_gate_are_audited_without_personal_data(web: TestClient, ad: Adapters) -> None:
    ref = stored_order(ad, "awaiting_assessment")
    before = last_audit_id(ad)
    r = post(web, f"/api/orders/{ref}/assessment", KALMAR_CLINICIAN,
             {"harm_found": True, "decision": "restrict", "rationale": "Skäl"})
    assert r.status_code == 403 and codes(r) == {"": "wrong_role"}
    submit = post(web, "/api/orders", KALMAR_SUPPORT, body(patient_personal_number=PATIENT))
    assert submit.status_code == 403
    admin = web.get("/api/admin/overview", headers={"X-Remote-User": KALMAR_CLINICIAN})
    assert admin.status_code == 403

    rows = refusals(ad, KALMAR_CLINICIAN, before)
    assert [(e.detail["why"], e.detail["route"]) for e in rows] == [
        ("wrong_role", "/api/orders/{reference}/assessment"), ("wrong_role", "/api/admin/overview")]
    assert rows[0].detail["reference"] == ref
    support = refusals(ad, KALMAR_SUPPORT, before)
    assert [(e.detail["why"], e.detail["route"], e.detail["method"]) for e in support] == [
        ("wrong_role", "/api/orders", "POST")]
    for e in rows + support:
        assert e.patient_pnr is None and e.order_reference is None
        assert "19121212" not in str(e.detail) and "1212" not in str(e.detail)


def test_a_refusal_the_service_layer_logged_is_logged_once(web: TestClient, ad: Adapters) -> None:
    ref = stored_order(ad, "awaiting_assessment")
    before = last_audit_id(ad)
    r = post(web, f"/api/orders/{ref}/assessment", "DEMO-STOCKHOLM-ASSESSOR",
             {"harm_found": True, "decision": "restrict", "rationale": "Skäl"})
    assert r.status_code == 403
    rows = refusals(ad, "DEMO-STOCKHOLM-ASSESSOR", before)
    assert len(rows) == 1 and rows[0].detail["why"] == "other_region" and rows[0].order_reference == ref


# --- logout revokes the session on the server ----------------------------------------------------------------

def _csrf(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def test_logout_revokes_the_session_cookie_on_the_server(web: TestClient) -> None:
    token = _csrf(web.get("/login").text)
    assert web.post("/login", data={"hsa_id": KALMAR_CLINICIAN, "csrf_token": token},
                    follow_redirects=False).status_code == 303
    token = _csrf(web.get("/").text)
    stolen = web.cookies.get("ro_session")
    assert stolen
    assert web.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": token}).status_code == 200
    assert web.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303

    # The copied cookie (still validly signed, not expired) no longer identifies anyone.
    web.cookies.clear()
    web.cookies.set("ro_session", stolen)
    r = web.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": token})
    assert r.status_code == 401, r.text
    assert web.get("/api/orders/RO-2026-000001").status_code == 401
    page = web.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    printed = web.post("/api/paper-forms/seal_or_lock.pdf", json=body(), headers={"X-CSRF-Token": token})
    assert printed.status_code == 401
    # Logging in again works (a new session).
    web.cookies.clear()
    token = _csrf(web.get("/login").text)
    assert web.post("/login", data={"hsa_id": KALMAR_CLINICIAN, "csrf_token": token},
                    follow_redirects=False).status_code == 303
    token = _csrf(web.get("/").text)
    assert web.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": token}).status_code == 200


# --- free text refuses bidirectional control characters -----------------------------------------------------

def test_the_bidi_rule_names_every_embedding_override_and_isolate() -> None:
    assert {f"U+{ord(c):04X}" for c in BIDI_CONTROLS} == {
        "U+202A", "U+202B", "U+202C", "U+202D", "U+202E", "U+2066", "U+2067", "U+2068", "U+2069"}
    assert has_bidi_control("Hot mot \u202epatienten")
    assert not has_bidi_control("Hot mot patienten, åäö \u200f \u061c")  # marks are not overrides


@pytest.mark.parametrize("char", ["\u202e", "\u202a", "\u2066", "\u2069"])
def test_free_text_with_a_direction_override_is_refused_in_swedish(web: TestClient, ad: Adapters, char: str) -> None:
    reason = f"Hot mot patienten {char}nettirkS"
    r = post(web, "/api/orders/validate", KALMAR_CLINICIAN, body(reason=reason))
    assert r.status_code == 422 and codes(r) == {"reason": "bidi_control"}, r.text
    assert "läsriktning" in messages(r)["reason"]
    ref = stored_order(ad, "awaiting_assessment")
    d = post(web, f"/api/orders/{ref}/assessment", "DEMO-KALMAR-ASSESSOR",
             {"harm_found": True, "decision": "restrict", "rationale": f"Skäl {char}x"})
    assert d.status_code == 422 and codes(d) == {"rationale": "bidi_control"}, d.text
    assert "läsriktning" in messages(d)["rationale"]


# --- strict types in request bodies (part 5) ---------------------------------------------------------------

@pytest.mark.parametrize(("extra", "field"), [
    ({"reason": None}, "reason"), ({"urgent": None}, "urgent"), ({"patient_protected_identity": None},
                                                                 "patient_protected_identity"),
    ({"guardian_personal_number": 0}, "guardian_personal_number"), ({"minor_access": "ja"}, "minor_access"),
    ({"minor_access": {"grant": False}}, "minor_access"), ({"urgent": "true"}, "urgent"),
])
def test_validate_refuses_wrong_types_even_in_fields_the_order_type_ignores(web: TestClient, extra: dict[str, Any],
                                                                            field: str) -> None:
    r = post(web, "/api/orders/validate", KALMAR_CLINICIAN, body("seal_or_lock", **extra))
    assert r.status_code == 422 and codes(r) == {field: "invalid_value"}, r.text
    assert r.json()["warnings"] == [] or isinstance(r.json()["warnings"], list)


def test_block_guardian_refuses_unknown_actions_but_ignores_valid_ones(web: TestClient) -> None:
    b = body("block_guardian", guardian_personal_number=aged(44, 611), patient_personal_number=aged(9, 612))
    assert post(web, "/api/orders/validate", KALMAR_CLINICIAN, {**b, "actions": ["seal_journal"]}).status_code == 200
    bogus = post(web, "/api/orders/validate", KALMAR_CLINICIAN, {**b, "actions": ["bogus"]})
    assert bogus.status_code == 422 and codes(bogus) == {"actions": "invalid_value"}


def test_validates_malformed_json_answer_has_warnings_too(web: TestClient) -> None:
    r = web.post("/api/orders/validate", content=b'{"order_type": ', headers={
        "X-Remote-User": KALMAR_CLINICIAN, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["warnings"] == [] and codes(r) == {"": "invalid_value"}


def test_sample_check_takes_json_integers_only(web: TestClient) -> None:
    h = {"X-Remote-User": "DEMO-ADMIN"}
    for bad in ({"seed": False}, {"days": "30"}, {"size": True}):
        assert web.post("/api/admin/sample-check", json=bad, headers=h).status_code == 422, bad
    assert web.post("/api/admin/sample-check", json={"days": 30.0, "size": 1}, headers=h).status_code == 200


def test_an_undeclared_method_gets_405_naming_the_declared_ones(web: TestClient) -> None:
    h = {"X-Remote-User": KALMAR_CLINICIAN}
    r = web.get("/api/orders/validate", headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = web.request("DELETE", "/api/paper-forms/seal_or_lock.pdf", headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert codes(r) == {"": "http_error"}  # the code the app has always given a 405
