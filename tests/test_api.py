"""The JSON API of the contract, over HTTP against the app served by uvicorn.

The app has the in-process engine behind it (`api`, `live_app`): an order's run goes as far as it can
within the request that starts or resumes it, so a test reads the status a decision needs at once. The few
tests about the app with real Prefect behind it (its health check, a decision resuming a served flow) use
`api_e2e`; one builds the app with the Prefect engine and no server, as when Prefect is down.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from flows.inprocess import FakeRun, InProcessEngine
from models.tables import AuditEvent, Decision, Order, RegistryPerson, Staff
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings

pytest.register_assert_rewrite("tests.webapp")  # imported here and loaded as a plugin: rewrite its asserts
from tests.webapp import (  # noqa: E402
    PATIENT,
    UNIT,
    UNTRUSTED,
    body,
    born_years_ago,
    pnr,
    staff,
    status_of,
    stored_order,
    wait_status,
)

pytest_plugins = ["tests.webapp"]

CLINICIAN, CLINICIAN2 = staff("clinician"), staff("clinician2")
ASSESSOR, HEAD, ONCALL, SUPPORT = staff("assessor"), staff("head"), staff("oncall"), staff("support")
ACCOUNTADMIN, BAKJOUR = staff("accountadmin"), staff("bakjour")
OTHER_HEAD, OTHER_ONCALL, OTHER_SUPPORT, OTHER_ASSESSOR = (staff(r, "ostergotland")
                                                           for r in ("head", "oncall", "support", "assessor"))
DUAL = "TEST-KALMAR-DUAL"  # clinician and assessor at once: the only way to try four eyes on one's own order
UNKNOWN_REF = "RO-2026-999999"
PNR_SHAPE = re.compile(r"(?:\d{6}|\d{8})[-+]?\d{4}")
ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 180}
APPROVE = {"approved": True, "comment": "ok"}


def codes(r: httpx.Response) -> set[str]:
    return {e["code"] for e in r.json()["errors"]}


def submit(api: Any, b: dict[str, Any] | None = None, user: str = CLINICIAN) -> str:
    r = api(user).post("/api/orders", json=b or body())
    assert r.status_code == 201, r.text
    return str(r.json()["reference"])


def run_of(ad: Adapters, reference: str) -> FakeRun:
    """The order's latest run in the in-process engine."""
    assert isinstance(ad.engine, InProcessEngine)
    run = ad.engine.run_of(reference)
    assert run is not None, reference
    return run


def count(ad: Adapters, model: Any, *where: Any) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture(scope="module")
def dual_role_person(ad: Adapters) -> str:
    with ad.db.session() as s:
        if s.get(Staff, DUAL) is None:
            s.add(Staff(hsa_id=DUAL, name="Dubbelrollen", email="dual@kalmar.invalid",
                        roles=["clinician", "assessor"], unit_hsa_id=UNIT, region="kalmar", active=True))
    return DUAL


# --- the schema and health ----------------------------------------------------------------------------

def test_openapi_describes_every_contract_path(api: Any) -> None:
    doc = api().get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/api/orders": "post", "/api/orders/validate": "post", "/api/orders/{reference}": "get",
        "/api/orders/{reference}/assessment": "post", "/api/orders/{reference}/approval": "post",
        "/api/orders/{reference}/callback": "post", "/api/orders/{reference}/execution": "post",
        "/api/orders/{reference}/cancel": "post", "/api/orders/{reference}/paper.pdf": "get",
        "/api/paper-forms/{order_type}.pdf": "get", "/healthz": "get",
    }
    for path, method in expected.items():
        assert method in paths[path], path
    submit_op = paths["/api/orders"]["post"]
    assert submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/OrderRequest"
    assert {"201", "200", "409", "422"} <= set(submit_op["responses"])
    key = [p for p in submit_op.get("parameters", []) if p["name"] == "Idempotency-Key"]
    assert len(key) == 1 and key[0]["in"] == "header" and key[0]["required"] is False, submit_op.get("parameters")
    assert "409" in key[0]["description"] and key[0]["schema"]["anyOf"][0]["type"] == "string"
    schemas = doc["components"]["schemas"]
    assert {"order_type", "initiative", "patient_personal_number", "minor_access"} <= set(schemas["OrderRequest"]["properties"])
    assert "MinorAccess" in schemas and "OrderView" in schemas and "AssessmentDecision" in schemas
    assert not [p for p in paths if not (p.startswith("/api/") or p == "/healthz")]  # pages stay out of the API


@pytest.mark.e2e
def test_healthz_reports_database_prefect_and_smtp(api_e2e: Any) -> None:
    """With a real Prefect server behind the app: the check asks Prefect's API (the in-process engine always
    answers)."""
    r = api_e2e().get("/healthz")
    assert r.status_code == 200
    data = r.json()
    assert data["status"] == "ok", data
    assert data["database"]["ok"] and data["prefect"]["ok"] and data["smtp"]["ok"]


# --- identity and roles -------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"X-Remote-User": "DEMO-NOBODY"},
                                     {"X-Remote-User": CLINICIAN, "X-Forwarded-For": UNTRUSTED}],
                         ids=["no-identity", "unknown-person", "header-from-untrusted-address"])
def test_401_without_a_trusted_identity(api: Any, headers: dict[str, str]) -> None:
    c = api(**headers)
    for r in (c.get(f"/api/orders/{UNKNOWN_REF}"), c.post("/api/orders", json=body()),
              c.post("/api/orders/validate", json=body()), c.get("/api/paper-forms/seal_or_lock.pdf?region=kalmar"),
              c.post(f"/api/orders/{UNKNOWN_REF}/cancel", json={}),
              c.post(f"/api/orders/{UNKNOWN_REF}/assessment", json=ASSESS),
              c.post(f"/api/orders/{UNKNOWN_REF}/approval", json=APPROVE),
              c.post(f"/api/orders/{UNKNOWN_REF}/callback", json={"note": ""}),
              c.post(f"/api/orders/{UNKNOWN_REF}/execution", json={"system_reference": "ADM-1"}),
              c.get(f"/api/orders/{UNKNOWN_REF}/paper.pdf")):
        assert r.status_code == 401, (r.request.url, r.text)
        assert codes(r) == {"not_authenticated"}
    page = c.get("/bestallningar")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/bestallningar"


def test_403_for_a_role_that_may_not_submit(api: Any) -> None:
    for user in (ASSESSOR, HEAD, SUPPORT, "DEMO-ADMIN"):
        r = api(user).post("/api/orders", json=body())
        assert r.status_code == 403 and codes(r) == {"wrong_role"}, (user, r.text)


# --- submit, validate, error codes --------------------------------------------------------------------

def test_submit_answers_201_with_reference_due_time_and_warnings(api: Any) -> None:
    r = api(CLINICIAN).post("/api/orders", json=body(actions=["lock_login"]))
    assert r.status_code == 201, r.text
    data = r.json()
    assert re.fullmatch(r"RO-\d{4}-\d{6}", data["reference"])
    assert data["status"] == "submitted" and data["urgent"] is False
    assert datetime.fromisoformat(data["due_at"]) > datetime.now(UTC)
    assert "lock_without_seal" in {w["code"] for w in data["warnings"]}
    assert all(w["message"] for w in data["warnings"])


def test_urgent_order_has_a_30_minute_callback_deadline(api: Any) -> None:
    r = api(CLINICIAN).post("/api/orders", json=body(urgent=True))
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["urgent"] is True
    submitted = datetime.now(UTC)
    callback = datetime.fromisoformat(data["callback_due_at"])
    assert timedelta(minutes=25) < callback - submitted <= timedelta(minutes=30)


def _registry(ad: Adapters, pnr12: str, **state: Any) -> None:
    with ad.db.session() as s:
        s.merge(RegistryPerson(pnr=pnr12, blocked_guardians=[], minor_access=[], **state))


def _digits(p: str) -> str:
    return p.replace("-", "")


def _case(ad: Adapters, code: str) -> tuple[dict[str, Any], str]:
    """A body that triggers `code`, and the field it must be reported on."""
    child = pnr(born_years_ago(14))
    if code == "required":
        b = body()
        del b["patient_personal_number"]
        return b, "patient_personal_number"
    if code == "invalid_value":
        return body(order_type="seal_or_lock", initiative="someone"), "initiative"
    if code == "invalid_personal_number":
        return body(patient_personal_number="19121212-1213"), "patient_personal_number"
    if code == "not_aged_13_to_15":
        return body("minor_access", patient_personal_number=pnr(born_years_ago(16))), "patient_personal_number"
    if code == "guardian_is_patient":
        return body("block_guardian", patient_personal_number=child, guardian_personal_number=child), \
            "guardian_personal_number"
    if code == "reason_too_long":
        return body(reason="x" * 2001), "reason"
    if code == "unknown_care_unit":
        return body(care_unit_hsa_id="SE2321000032-NOPE"), "care_unit_hsa_id"
    if code == "care_only":
        return body("block_guardian", initiative="patient"), "initiative"
    if code == "identity_check_required":
        p = pnr()
        _registry(ad, _digits(p), sealed_by_initiative="patient", sealed_by_region="kalmar", sealed_by_order="RO-2026-000000")
        return body("restore_access", initiative="patient", actions=["seal_journal"], patient_personal_number=p), \
            "identity_checked_in_person"
    if code == "consent_required":
        return body("minor_access", guardian_personal_number=pnr(born_years_ago(45)),
                    minor_access={"grant": True, "recipient": "guardian", "child_consent": False}), \
            "minor_access.child_consent"
    if code == "protected_identity":
        return body("minor_access", guardian_personal_number=pnr(born_years_ago(45)), patient_protected_identity=True,
                    minor_access={"grant": True, "recipient": "guardian", "child_consent": True}), \
            "guardian_personal_number"
    if code == "care_initiated_restriction":
        p = pnr()
        _registry(ad, _digits(p), sealed_by_initiative="care", sealed_by_region="kalmar", sealed_by_order="RO-2026-000000")
        return body("restore_access", initiative="patient", actions=["seal_journal"], patient_personal_number=p,
                    identity_checked_in_person=True), "initiative"
    if code == "nothing_to_restore":
        return body("restore_access", actions=["lock_login"]), "actions"
    raise AssertionError(code)


ERROR_CODES = ["required", "invalid_value", "invalid_personal_number", "not_aged_13_to_15", "guardian_is_patient",
               "reason_too_long", "unknown_care_unit", "care_only", "identity_check_required", "consent_required",
               "protected_identity", "care_initiated_restriction", "nothing_to_restore"]


@pytest.mark.parametrize("code", ERROR_CODES)
def test_every_error_code_is_reachable_and_blocks_both_submit_and_validate(ad: Adapters, api: Any,
                                                                           code: str) -> None:
    b, fieldname = _case(ad, code)
    c = api(CLINICIAN)
    before = count(ad, Order)
    for path in ("/api/orders", "/api/orders/validate"):
        r = c.post(path, json=b)
        assert r.status_code == 422, (path, r.text)
        errors = r.json()["errors"]
        assert {"field": fieldname, "code": code} in [{"field": e["field"], "code": e["code"]} for e in errors], errors
        assert all(e["message"] for e in errors)
    assert count(ad, Order) == before


def test_every_problem_is_reported_at_once(api: Any) -> None:
    b = body("minor_access", patient_personal_number="19121212-1213", reason="x" * 2001,
             care_unit_hsa_id="NOPE", guardian_personal_number="20991301-0000",
             minor_access={"grant": True, "recipient": "guardian"})
    r = api(CLINICIAN).post("/api/orders", json=b)
    assert r.status_code == 422
    assert {"invalid_personal_number", "reason_too_long", "unknown_care_unit", "consent_required"} <= codes(r)


def test_validate_stores_nothing_and_returns_warnings(ad: Adapters, api: Any) -> None:
    c = api(CLINICIAN)
    before = count(ad, Order)
    r = c.post("/api/orders/validate", json=body(actions=["lock_login"], patient_protected_identity=True))
    assert r.status_code == 200, r.text
    assert r.json()["errors"] == []
    assert {"lock_without_seal", "protected_identity"} <= {w["code"] for w in r.json()["warnings"]}
    assert count(ad, Order) == before


@pytest.mark.parametrize(("content", "ctype", "status"), [
    (b"{not json", "application/json", 422), (b"[1, 2]", "application/json", 422),
    (b"order_type=seal_or_lock", "application/x-www-form-urlencoded", 415)])
def test_a_body_that_is_not_a_json_object(api: Any, content: bytes, ctype: str, status: int) -> None:
    r = api(CLINICIAN).post("/api/orders", content=content, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["message"]


def test_oversized_bodies_are_refused_with_413(api: Any) -> None:
    c = api(CLINICIAN)
    big = body(reason="å" * 40_000)  # 80 kB of UTF-8
    r = c.post("/api/orders", json=big)
    assert r.status_code == 413 and codes(r) == {"body_too_large"}
    assert "64 KiB" in r.json()["errors"][0]["message"]

    def chunks() -> Any:  # no Content-Length: the limit counts the stream
        for _ in range(20):
            yield b" " * 4096
    r = c.post("/api/orders", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and codes(r) == {"body_too_large"}
    page = c.post("/bestall/seal_or_lock", content=b"a=" + b"x" * 70_000,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert page.status_code == 413 and 'lang="sv"' in page.text


# --- idempotency --------------------------------------------------------------------------------------

def test_same_key_and_body_replays_the_first_answer(ad: Adapters, api: Any) -> None:
    c = api(CLINICIAN, **{"Idempotency-Key": f"test-{uuid.uuid4()}"})
    b = body()
    first = c.post("/api/orders", json=b)
    again = c.post("/api/orders", json=b)
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json() == first.json()
    assert count(ad, Order, Order.reference == first.json()["reference"]) == 1
    other = c.post("/api/orders", json={**b, "urgent": True})
    assert other.status_code == 409 and codes(other) == {"idempotency_conflict"}


def test_keys_are_per_person(api: Any) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    b = body()
    mine = api(CLINICIAN, **key).post("/api/orders", json=b)
    theirs = api(CLINICIAN2, **key).post("/api/orders", json=b)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["reference"] != theirs.json()["reference"]


def test_concurrent_double_submit_makes_one_order(ad: Adapters, api: Any) -> None:
    key = f"double-{uuid.uuid4()}"
    b = body()
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=str(api().base_url), timeout=60,
                          headers={"X-Remote-User": CLINICIAN, "Idempotency-Key": key}) as c:
            answers.append(c.post("/api/orders", json=b))
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["reference"] for r in answers}) == 1
    assert count(ad, Order, Order.idempotency_key == f"{CLINICIAN}:{key}") == 1


# --- reading ------------------------------------------------------------------------------------------

def test_read_masks_the_number_shows_history_and_logs_every_read(ad: Adapters, api: Any) -> None:
    ref = submit(api, body(patient_personal_number=PATIENT))
    c = api(CLINICIAN)
    r = c.get(f"/api/orders/{ref}")
    assert r.status_code == 200
    data = r.json()
    assert data["patient"] == "19121212-****"
    assert "1212-1212" not in r.text and "191212121212" not in r.text
    assert data["reference"] == ref and data["order_type"] == "seal_or_lock"
    assert data["history"][0]["to"] == "submitted" and "from" in data["history"][0]
    c.get(f"/api/orders/{ref.lower()}")
    assert count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "order_read") == 2


@pytest.fixture(scope="module")
def shared_order(live_app: str) -> str:
    """One order for the read-permission matrix."""
    with httpx.Client(base_url=live_app, headers={"X-Remote-User": CLINICIAN}, timeout=60) as c:
        r = c.post("/api/orders", json=body())
        assert r.status_code == 201, r.text
        return str(r.json()["reference"])


@pytest.mark.parametrize(("reader", "allowed"), [
    (CLINICIAN, True), (CLINICIAN2, False), (ASSESSOR, True), (HEAD, True), (SUPPORT, True), (ONCALL, True),
    (ACCOUNTADMIN, True), (BAKJOUR, True), ("DEMO-ADMIN", True), (OTHER_HEAD, False), (OTHER_SUPPORT, False)])
def test_who_may_read_an_order(ad: Adapters, api: Any, shared_order: str, reader: str, allowed: bool) -> None:
    ref = shared_order
    refused_before = count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "order_read_refused")
    r = api(reader).get(f"/api/orders/{ref}")
    assert r.status_code == (200 if allowed else 403), r.text
    pdf = api(reader).get(f"/api/orders/{ref}/paper.pdf")
    assert pdf.status_code == (200 if allowed else 403)
    refused = count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "order_read_refused")
    assert refused - refused_before == (0 if allowed else 2)


def test_unknown_references_are_404(api: Any) -> None:
    for ref in (UNKNOWN_REF, "not-a-reference", "19121212-1212"):
        assert api(CLINICIAN).get(f"/api/orders/{ref}").status_code == 404
    for path, user, payload in (("assessment", ASSESSOR, ASSESS), ("approval", HEAD, APPROVE),
                                ("callback", ONCALL, {"note": ""}), ("execution", ACCOUNTADMIN, {"system_reference": "x"}),
                                ("cancel", CLINICIAN, {"reason": ""})):
        r = api(user).post(f"/api/orders/{UNKNOWN_REF}/{path}", json=payload)
        assert r.status_code == 404 and codes(r) == {"not_found"}, (path, r.text)
    assert api(CLINICIAN).get(f"/api/orders/{UNKNOWN_REF}/paper.pdf").status_code == 404


# --- human steps --------------------------------------------------------------------------------------

def test_assessment_and_approval_with_roles_four_eyes_and_statuses(ad: Adapters, api: Any) -> None:
    ref = submit(api)
    reader = api(CLINICIAN)
    wait_status(reader, ref, "awaiting_assessment")

    early = api(HEAD).post(f"/api/orders/{ref}/approval", json=APPROVE)
    assert early.status_code == 409 and codes(early) == {"wrong_status"}
    for user in (CLINICIAN, HEAD, ONCALL):
        r = api(user).post(f"/api/orders/{ref}/assessment", json=ASSESS)
        assert r.status_code == 403 and codes(r) == {"wrong_role"}, (user, r.text)
    # An assessor of another region may not read this order, so may not assess it either.
    other = api(OTHER_ASSESSOR).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert other.status_code == 403 and codes(other) == {"other_region"}, other.text
    assert count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "decision_refused",
                 AuditEvent.actor == OTHER_ASSESSOR) == 1
    bad = api(ASSESSOR).post(f"/api/orders/{ref}/assessment", json={"harm_found": "maybe"})
    assert bad.status_code == 422 and {"required", "invalid_value"} <= codes(bad)

    r = api(ASSESSOR).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert r.status_code == 202, r.text
    assert r.json() == {"reference": ref, "stage": "harm_assessment", "status": "awaiting_assessment",
                        "decision": "proposed"}
    wait_status(reader, ref, "awaiting_approval")

    for user, code in ((OTHER_HEAD, "other_unit"), (BAKJOUR, "wrong_role"), (ASSESSOR, "wrong_role")):
        r = api(user).post(f"/api/orders/{ref}/approval", json=APPROVE)
        assert r.status_code == 403 and codes(r) == {code}, (user, r.text)
    r = api(HEAD).post(f"/api/orders/{ref}/approval", json=APPROVE)
    assert r.status_code == 202, r.text
    final = wait_status(reader, ref, "executing", "completed")
    assert final in ("executing", "completed")
    late = api(CLINICIAN).post(f"/api/orders/{ref}/cancel", json={"reason": "för sent"})
    assert late.status_code == 409
    # The order's one run took each decision: it waited twice and went on to the end.
    run = run_of(ad, ref)
    assert run.state == "completed" and run.segments == 3, run


@pytest.mark.e2e
def test_a_decision_over_http_resumes_the_served_flow_and_a_cancel_ends_it(api_e2e: Any,
                                                                          prefect_ad: Adapters) -> None:
    """With real Prefect behind the app: the app starts the order's flow run, hands the decision it stored to
    the suspended run (which moves the order on), and cancelling the order cancels the run."""
    ref = submit(api_e2e)
    reader = api_e2e(CLINICIAN)
    wait_status(reader, ref, "awaiting_assessment")
    r = api_e2e(ASSESSOR).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert r.status_code == 202 and r.json()["decision"] == "proposed", r.text
    wait_status(reader, ref, "awaiting_approval")
    done = api_e2e(CLINICIAN).post(f"/api/orders/{ref}/cancel", json={"reason": "Fel patient"})
    assert done.status_code == 200 and done.json() == {"reference": ref, "status": "cancelled"}, done.text
    with prefect_ad.db.session() as s:
        run_id = s.scalar(select(Order.flow_run_id).where(Order.reference == ref))
    assert run_id is not None
    deadline, state = time.monotonic() + 30, ""
    while time.monotonic() < deadline and state != "cancelled":  # it may be between two steps: it ends so
        state = asyncio.run(prefect_ad.engine.read_run(run_id)).state
        time.sleep(0.3)
    assert state == "cancelled" and status_of(reader, ref) == "cancelled"


def test_nobody_decides_on_their_own_order(api: Any, dual_role_person: str) -> None:
    ref = submit(api, user=dual_role_person)
    wait_status(api(dual_role_person), ref, "awaiting_assessment")
    r = api(dual_role_person).post(f"/api/orders/{ref}/assessment", json=ASSESS)
    assert r.status_code == 403 and codes(r) == {"own_order"}, r.text
    done = api(dual_role_person).post(f"/api/orders/{ref}/cancel", json={"reason": "Fel patient"})
    assert done.status_code == 200 and done.json() == {"reference": ref, "status": "cancelled"}


def test_callback_on_an_urgent_order(api: Any) -> None:
    ref = submit(api, body(urgent=True))
    reader = api(CLINICIAN)
    wait_status(reader, ref, "awaiting_callback")
    assert api(ASSESSOR).post(f"/api/orders/{ref}/assessment", json=ASSESS).status_code == 409
    assert api(CLINICIAN).post(f"/api/orders/{ref}/callback", json={"note": "x"}).status_code == 403
    other = api(OTHER_ONCALL).post(f"/api/orders/{ref}/callback", json={"note": "x"})
    assert other.status_code == 403 and codes(other) == {"other_region"}
    r = api(ONCALL).post(f"/api/orders/{ref}/callback", json={"note": "Ringt upp beställaren"})
    assert r.status_code == 202 and r.json()["stage"] == "callback", r.text
    wait_status(reader, ref, "awaiting_assessment")


def _order_waiting_for_manual_execution(ad: Adapters) -> str:
    """An order at `executing`: the runs use the simulated registry, which executes without a person, so a
    manual execution step can only be reached this way (tests.webapp.stored_order)."""
    return stored_order(ad, "executing")


def test_manual_execution_by_the_account_administrator(ad: Adapters, api: Any) -> None:
    waiting = submit(api)
    wait_status(api(CLINICIAN), waiting, "awaiting_assessment")
    assert api(ACCOUNTADMIN).post(f"/api/orders/{waiting}/execution",
                                  json={"system_reference": "ADM-1"}).status_code == 409
    ref = _order_waiting_for_manual_execution(ad)
    assert api(SUPPORT).post(f"/api/orders/{ref}/execution", json={"system_reference": "ADM-1"}).status_code == 403
    empty = api(ACCOUNTADMIN).post(f"/api/orders/{ref}/execution", json={"system_reference": ""})
    assert empty.status_code == 422
    r = api(ACCOUNTADMIN).post(f"/api/orders/{ref}/execution", json={"system_reference": "ADM-4711"})
    assert r.status_code == 202, r.text
    with ad.db.session() as s:
        d = s.scalar(select(Decision).join(Order).where(Order.reference == ref))
        assert d is not None and d.stage == "execution" and d.decided_by == ACCOUNTADMIN
        assert d.detail == {"system_reference": "ADM-4711"}


HEAD_ASSESSOR, FOUR_EYES_UNIT = "TEST-KALMAR-HEADASSESSOR", "TEST-KALMAR-FOUREYES-UNIT"


@pytest.fixture(scope="module")
def head_who_assesses(ad: Adapters) -> str:
    """The head of a care unit who is also an assessor: four eyes must stop them approving what they
    assessed, since the role check alone would let them."""
    from models.tables import CareUnit
    with ad.db.session() as s:
        if s.get(CareUnit, FOUR_EYES_UNIT) is None:
            s.add(CareUnit(hsa_id=FOUR_EYES_UNIT, name="Fyra ögon-enheten", region="kalmar",
                           head_hsa_id=HEAD_ASSESSOR))
            s.add(Staff(hsa_id=HEAD_ASSESSOR, name="Chefen som menpröva", email="headassessor@kalmar.invalid",
                        roles=["head_of_department", "assessor"], unit_hsa_id=FOUR_EYES_UNIT, region="kalmar",
                        active=True))
    return HEAD_ASSESSOR


def test_the_assessor_may_not_approve_and_other_units_heads_neither_see_nor_approve(
        ad: Adapters, api: Any, head_who_assesses: str) -> None:
    # Waiting for approval after the head's own accepted harm assessment, as the run leaves it (the path
    # there through the run is test_assessment_and_approval_with_roles_four_eyes_and_statuses).
    ref = stored_order(ad, "awaiting_approval", unit=FOUR_EYES_UNIT)
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None
        s.add(Decision(order_id=order.id, stage="harm_assessment", decided_by=head_who_assesses, outcome="restrict",
                       detail={"harm_found": True, "review_after_days": 365}, text="Risk för men", state="accepted",
                       created_at=datetime.now(UTC)))
    same = api(head_who_assesses).post(f"/api/orders/{ref}/approval", json=APPROVE)
    assert same.status_code == 403 and codes(same) == {"same_as_assessor"}, same.text
    # Shown in their queue, with the reason they cannot decide it, and no form to do so.
    queue = api(head_who_assesses).get("/ko/godkannande")
    assert f'id="{ref}"' in queue.text and "fyra ögon" in queue.text and f'action="/ko/godkannande/{ref}"' not in queue.text
    # The head of another unit in the same region (and of another region): not in the queue, 403 on approval.
    for head, why in ((HEAD, "other_unit"), (OTHER_HEAD, "other_unit")):
        page = api(head).get("/ko/godkannande")
        assert page.status_code == 200 and ref not in page.text, head
        r = api(head).post(f"/api/orders/{ref}/approval", json=APPROVE)
        assert r.status_code == 403 and codes(r) == {why}, (head, r.text)
    assert status_of(api(CLINICIAN), ref) == "awaiting_approval"
    done = api("DEMO-ADMIN").post(f"/api/orders/{ref}/cancel", json={"reason": "Testet är klart"})
    assert done.status_code == 200 and done.json() == {"reference": ref, "status": "cancelled"}, done.text


def test_an_administrator_may_cancel_anyones_order(ad: Adapters, api: Any) -> None:
    ref = submit(api)
    r = api("DEMO-ADMIN").post(f"/api/orders/{ref}/cancel", json={"reason": "Dubblett"})
    assert r.status_code == 200 and r.json() == {"reference": ref, "status": "cancelled"}, r.text
    with ad.db.session() as s:
        ev = s.scalar(select(AuditEvent).where(AuditEvent.order_reference == ref, AuditEvent.to_status == "cancelled"))
        assert ev is not None and ev.actor == "DEMO-ADMIN"
    assert api(CLINICIAN).get(f"/api/orders/{ref}").json()["status"] == "cancelled"


def test_cancel_by_the_submitter_only_and_only_once(api: Any) -> None:
    ref = submit(api)
    r = api(CLINICIAN2).post(f"/api/orders/{ref}/cancel", json={"reason": "x"})
    assert r.status_code == 403 and codes(r) == {"wrong_role"}
    r = api(CLINICIAN).post(f"/api/orders/{ref}/cancel", json={"reason": "Fel patient"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    again = api(CLINICIAN).post(f"/api/orders/{ref}/cancel", json={"reason": "igen"})
    assert again.status_code == 409
    assert api(CLINICIAN).get(f"/api/orders/{ref}").json()["status"] == "cancelled"


# --- documents ----------------------------------------------------------------------------------------

def test_paper_forms_filled_and_blank(api: Any) -> None:
    ref = submit(api, body("block_guardian", patient_personal_number=pnr(born_years_ago(8))))
    c = api(CLINICIAN)
    filled = c.get(f"/api/orders/{ref}/paper.pdf")
    assert filled.status_code == 200 and filled.headers["content-type"] == "application/pdf"
    assert filled.content.startswith(b"%PDF-") and ref in filled.headers["content-disposition"]
    for order_type in ("seal_or_lock", "restore_access", "block_guardian", "minor_access"):
        blank = c.get(f"/api/paper-forms/{order_type}.pdf", params={"region": "kalmar"})
        assert blank.status_code == 200 and blank.content.startswith(b"%PDF-"), order_type
    assert c.get("/api/paper-forms/nope.pdf?region=kalmar").status_code == 404
    wrong = c.get("/api/paper-forms/seal_or_lock.pdf?region=narnia")
    assert wrong.status_code == 422 and codes(wrong) == {"invalid_value"}


def test_orders_and_paper_still_work_when_prefect_is_down(settings: Settings, db: Database) -> None:
    """The app with the Prefect engine and its API pointed at a closed port: the order is stored (the
    reconciler starts its run later), the paper form prints, and /healthz says what is down."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.bootstrap import build
    from forms.app import create_app

    async def run() -> None:
        transport = httpx.ASGITransport(app=create_app(build(settings, db=db)), client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                     headers={"X-Remote-User": CLINICIAN}) as c:
            r = await c.post("/api/orders", json=body())
            assert r.status_code == 201, r.text
            ref = r.json()["reference"]
            pdf = await c.get(f"/api/orders/{ref}/paper.pdf")
            assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
            health = (await c.get("/healthz")).json()
            assert health["status"] == "degraded" and health["prefect"]["ok"] is False
            assert health["database"]["ok"] is True
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        asyncio.run(run())


# --- sessions, CSRF, escaping -------------------------------------------------------------------------

def _csrf(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def test_cookie_sessions_need_the_csrf_token(live_app: str) -> None:
    with httpx.Client(base_url=live_app, timeout=60) as browser:
        token = _csrf(browser.get("/login").text)
        refused = browser.post("/login", data={"hsa_id": CLINICIAN, "csrf_token": "forged"})
        assert refused.status_code == 403
        r = browser.post("/login", data={"hsa_id": CLINICIAN, "csrf_token": token, "next": "https://evil.invalid/"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        token = _csrf(browser.get("/").text)
        assert browser.post("/api/orders/validate", json=body()).status_code == 403
        ok = browser.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": token})
        assert ok.status_code == 200, ok.text
        form = browser.post("/bestall/seal_or_lock", data={"patient_personal_number": PATIENT})
        assert form.status_code == 403
        assert browser.post("/logout", data={"csrf_token": token}).status_code == 303
        assert browser.get("/api/orders/validate").status_code in (401, 405)
        assert browser.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": token}).status_code == 401


def test_free_text_is_escaped_and_pages_never_show_the_number(api: Any) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    ref = submit(api, body(patient_personal_number=PATIENT, reason=evil))
    page = api(HEAD).get(f"/bestallningar/{ref}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert "19121212-****" in page.text and "1212-1212" not in page.text
    title = re.search(r"<title>(.*?)</title>", page.text, re.S)
    assert title and ref in title.group(1) and not PNR_SHAPE.search(title.group(1))
    assert "default-src 'self'" in page.headers["content-security-policy"]
    queue = api(ASSESSOR).get("/ko/menprovning")
    assert queue.status_code == 200 and "<script>alert" not in queue.text
    assert not PNR_SHAPE.search(re.sub(r"\d{8}-\*{4}", "", queue.text))


# --- CSRF behind the SSO proxy and on every form ------------------------------------------------------

def test_state_changing_api_calls_need_json_or_the_token_and_never_come_cross_site(
        ad: Adapters, api: Any, live_app: str, shared_order: str) -> None:
    """The SSO proxy adds X-Remote-User to whatever the browser sends, a cross-site form post too: the
    header alone must not make a post without a body (make urgent, resume digitally) go through."""
    ref = shared_order
    c = api(ONCALL)
    for headers, content in (({}, None), ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
                             ({"Content-Type": "text/plain"}, b'{"a": 1}'),
                             ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--")):
        for path in (f"/api/orders/{ref}/urgent", f"/api/orders/{ref}/resume-digital",
                     f"/api/orders/{ref}/callback", f"/api/orders/{ref}/cancel"):
            r = c.post(path, content=content, headers=headers)
            assert r.status_code == 415 and codes(r) == {"unsupported_media_type"}, (path, headers, r.text)
    odd = c.post(f"/api/orders/{ref}/urgent", content=b"a=1", headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": "tökén".encode()})
    assert odd.status_code == 415, odd.text  # a token that is not ASCII is just a wrong token
    cross = c.post(f"/api/orders/{ref}/urgent", json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and codes(cross) == {"csrf_failed"}, cross.text
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None and not order.urgent and order.callback_due_at is None
    # Same-site and same-origin fetches, and a post that carries the session's token, pass the guard
    # (an unknown order then answers 404, past the guard).
    for site in ("same-origin", "same-site", "none"):
        r = c.post(f"/api/orders/{UNKNOWN_REF}/urgent", json={}, headers={"Sec-Fetch-Site": site})
        assert r.status_code == 404, (site, r.text)
    with httpx.Client(base_url=live_app, timeout=60, headers={"X-Remote-User": ONCALL}) as sso_browser:
        token = _csrf(sso_browser.get("/").text)
        r = sso_browser.post(f"/api/orders/{UNKNOWN_REF}/urgent", headers={"X-CSRF-Token": token})
        assert r.status_code == 404, r.text
        forged = sso_browser.post(f"/api/orders/{UNKNOWN_REF}/urgent", headers={"X-CSRF-Token": "forged"})
        assert forged.status_code == 415
    # A cross-site post to a page is refused before it is read, even with the right token.
    with httpx.Client(base_url=live_app, timeout=60, headers={"X-Remote-User": CLINICIAN}) as sso_browser:
        token = _csrf(sso_browser.get("/").text)
        r = sso_browser.post(f"/bestallningar/{UNKNOWN_REF}/aterkalla", data={"csrf_token": token},
                             headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and 'lang="sv"' in r.text


ALL_ROLES = "TEST-KALMAR-ALLROLES"
CSRF_REFUSED = "Formuläret har gått ut eller kom inte från den här tjänsten"
# What a form route's path parameters are filled with; a new parameter must be added here.
PATH_VALUES: dict[str, list[str]] = {"reference": [UNKNOWN_REF], "slug": ["menprovning", "godkannande",
                                                                          "aterringning", "verkstallande"],
                                     "order_type": ["seal_or_lock", "restore_access", "block_guardian",
                                                    "minor_access"]}


def _html_form_posts() -> list[str]:
    """Every POST route of the app outside /api (the HTML forms), with its path parameters filled in."""
    from fastapi.routing import APIRoute

    from forms.app import create_app
    def routes(items: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
        for r in items:
            if isinstance(r, APIRoute):
                yield prefix + r.path, set(r.methods)
            elif hasattr(r, "original_router"):  # FastAPI 0.150 keeps included routers as they are
                yield from routes(r.original_router.routes, prefix + r.include_context.prefix)
            elif hasattr(r, "routes") and not hasattr(r, "app"):
                yield from routes(r.routes, prefix)
    out: list[str] = []
    for path, methods in routes(create_app().routes):
        if "POST" not in methods or path.startswith("/api/"):
            continue
        paths = [path]
        for name in re.findall(r"{(\w+)}", path):
            assert name in PATH_VALUES, f"{path}: add a value for {{{name}}} to PATH_VALUES"
            paths = [p.replace(f"{{{name}}}", v) for p in paths for v in PATH_VALUES[name]]
        out += paths
    return out


FORM_POSTS = _html_form_posts()


@pytest.fixture(scope="module")
def all_roles(ad: Adapters) -> str:
    """Someone with every role, so no form refuses before its CSRF check for a reason of its own."""
    with ad.db.session() as s:
        if s.get(Staff, ALL_ROLES) is None:
            s.add(Staff(hsa_id=ALL_ROLES, name="Allroll", email="allroles@kalmar.invalid",
                        roles=["clinician", "assessor", "head_of_department", "support", "account_admin", "on_call",
                               "bakjour", "admin"], unit_hsa_id=UNIT, region="kalmar", active=True))
    return ALL_ROLES


def _logged_in(live_app: str, hsa_id: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=live_app, timeout=60)
    r = c.post("/login", data={"hsa_id": hsa_id, "csrf_token": _csrf(c.get("/login").text)})
    assert r.status_code == 303, r.text
    return c, _csrf(c.get("/").text)


def test_every_html_form_route_is_listed() -> None:
    assert {"/login", "/logout", "/bestall/seal_or_lock", "/ko/menprovning/" + UNKNOWN_REF,
            f"/bestallningar/{UNKNOWN_REF}/aterkalla", f"/bestallningar/{UNKNOWN_REF}/bradskande",
            f"/bestallningar/{UNKNOWN_REF}/aterringning", "/admin/logg/patient", "/admin/logg/stickprov",
            f"/omprovningar/{UNKNOWN_REF}"} <= set(FORM_POSTS)


@pytest.mark.parametrize("path", FORM_POSTS)
def test_every_html_form_refuses_a_post_without_its_token(ad: Adapters, live_app: str, all_roles: str,
                                                          path: str) -> None:
    c, token = _logged_in(live_app, all_roles)
    try:
        # Only this person's rows: in a whole session, the served flows write audit rows of other tests' orders.
        before = count(ad, AuditEvent, AuditEvent.actor == all_roles)
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": token + "x"}, {"csrf_token": token[:-1] + "å"}):
            r = c.post(path, data={**data, "hsa_id": all_roles, "personal_number": PATIENT})
            assert r.status_code == 403 and CSRF_REFUSED in r.text, (path, data, r.status_code, r.text[:300])
        # The SSO proxy's header is no token either.
        r = httpx.post(live_app + path, data={"hsa_id": all_roles}, headers={"X-Remote-User": all_roles}, timeout=60)
        assert r.status_code == 403 and CSRF_REFUSED in r.text, (path, r.status_code)
        assert count(ad, AuditEvent, AuditEvent.actor == all_roles) == before, path  # nothing done, not even a search
        # With the token the same post gets past the check (whatever the form then says), so the 403 was CSRF.
        ok = c.post(path, data={"csrf_token": token, "hsa_id": "DEMO-NOBODY", "days": "1", "size": "1"})
        assert CSRF_REFUSED not in ok.text, path
    finally:
        c.close()


def test_a_forged_or_tampered_session_cookie_is_no_login(live_app: str) -> None:
    from itsdangerous import URLSafeTimedSerializer
    forged = URLSafeTimedSerializer("not-the-app-secret", salt="restriction-orders-session").dumps(
        {"u": "DEMO-ADMIN", "c": "forged-token"})
    c, _ = _logged_in(live_app, CLINICIAN)
    real = c.cookies["ro_session"]
    c.close()
    payload, rest = real.split(".", 1)
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + rest
    for cookie in (forged, tampered, real[:-4] + "AAAA", "garbage"):
        with httpx.Client(base_url=live_app, timeout=60, cookies={"ro_session": cookie}) as b:
            page = b.get("/admin")
            assert page.status_code == 303 and page.headers["location"].startswith("/login"), cookie
            r = b.get(f"/api/orders/{UNKNOWN_REF}")
            assert r.status_code == 401, cookie
            r = b.post("/api/orders/validate", json=body(), headers={"X-CSRF-Token": "forged-token"})
            assert r.status_code == 401, cookie


def test_a_refused_callback_clock_read_is_audited(ad: Adapters, api: Any, shared_order: str) -> None:
    ref = shared_order
    before = count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "order_read_refused")
    r = api(OTHER_ONCALL).get(f"/api/orders/{ref}/callback-clock")
    assert r.status_code == 403
    after = count(ad, AuditEvent, AuditEvent.order_reference == ref, AuditEvent.action == "order_read_refused")
    assert after == before + 1
    assert api(ONCALL).get(f"/api/orders/{ref}/callback-clock").status_code == 200


# --- production settings ------------------------------------------------------------------------------

def test_the_app_refuses_to_start_behind_sso_without_a_real_session_secret() -> None:
    from forms.auth import InsecureSettings, check_session_settings
    from tasks.adapters.settings import DEFAULT_SESSION_SECRET, Settings
    check_session_settings(Settings(embedded_login=True))  # the embedded default needs no configuration
    for secret in (DEFAULT_SESSION_SECRET, "", "short-secret", " " * 40, DEFAULT_SESSION_SECRET + " "):
        with pytest.raises(InsecureSettings, match="RO_SESSION_SECRET"):
            check_session_settings(Settings(embedded_login=False, session_secret=secret))
    check_session_settings(Settings(embedded_login=False, session_secret="x" * 16 + "y" * 16))
    # And as the app is made from the environment (`uvicorn forms.app:app` builds its adapters from it on
    # first use): a clear error instead of an app, unless the secret is set.
    from forms.app import create_app
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RO_SESSION_SECRET", raising=False)
        mp.setenv("RO_EMBEDDED_LOGIN", "false")
        with pytest.raises(InsecureSettings, match="RO_EMBEDDED_LOGIN=false needs RO_SESSION_SECRET"):
            create_app()
        mp.setenv("RO_SESSION_SECRET", secrets.token_urlsafe(48))
        create_app()
