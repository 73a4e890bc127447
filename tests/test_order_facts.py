"""Issue 13 items 3–6 over the API and the forms, with the in-process engine behind the app (no Prefect):
the orderer's callback number, assessments that make sense, an order's stages with their facts, and the
duplicate warning (with the form's confirmation and its one-time token)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from forms.auth import User
from forms.pages.queues import parse_decision
from models import phone
from models.rules import check_assessment, restricts_access
from models.tables import AuditEvent, Order, OutboxMessage
from tasks.adapters import Adapters
from tests.webapp import born_years_ago, pnr, staff

CLINICIAN, CLINICIAN2 = staff("clinician"), staff("clinician2")
ASSESSOR, HEAD, ONCALL, SUPPORT = staff("assessor"), staff("head"), staff("oncall"), staff("support")
ACCOUNTADMIN, BAKJOUR, ADMIN = staff("accountadmin"), staff("bakjour"), "DEMO-ADMIN"
OTHER_REGION_CLINICIAN = staff("clinician", "ostergotland")
ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men.", "review_after_days": 180}
PHONE = "070-123 45 67"


def patient() -> str:
    """A patient of this module's own: a birth date no other module's helpers use, so no other test's open
    order can make a duplicate warning here (or ours there)."""
    return pnr(born_years_ago(61, extra_days=117))


def body(order_type: str = "seal_or_lock", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"order_type": order_type, "initiative": "care", "patient_personal_number": patient(),
                         "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar", "reason": "Hot mot patienten"}
    if order_type in ("seal_or_lock", "restore_access"):
        b["actions"] = ["seal_journal", "lock_login"]
    if order_type == "block_guardian":
        b["guardian_personal_number"] = pnr(born_years_ago(45, extra_days=117))
        b["patient_personal_number"] = pnr(born_years_ago(10, extra_days=117))
    b.update(extra)
    return b


@pytest.fixture(scope="module")
def client(ad: Adapters, smtp: Path) -> Iterator[TestClient]:
    """The app as the trusted SSO proxy on loopback reaches it (X-Remote-User), in-process engine."""
    from forms.app import create_app
    with TestClient(create_app(ad), client=("127.0.0.1", 40001), raise_server_exceptions=False) as c:
        yield c


def as_(user: str) -> dict[str, str]:
    return {"X-Remote-User": user}


def codes(r: Any, key: str = "errors") -> dict[str, str]:
    return {e["field"]: e["code"] for e in r.json()[key]}


def submit(client: TestClient, b: dict[str, Any], user: str = CLINICIAN) -> dict[str, Any]:
    r = client.post("/api/orders", json=b, headers=as_(user))
    assert r.status_code == 201, r.text
    return dict(r.json())


def read(client: TestClient, reference: str, user: str) -> dict[str, Any]:
    r = client.get(f"/api/orders/{reference}", headers=as_(user))
    assert r.status_code == 200, (user, r.text)
    return dict(r.json())


def order_count(ad: Adapters) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Order)) or 0)


# --- item 3: the orderer's callback number ------------------------------------------------------------

@pytest.mark.parametrize("typed", ["070-123 45 67", "0701234567", "+46 70 123 45 67", "+46 (0)70-123 45 67",
                                   "0046 70 123 45 67", "070 123 45 67"])
def test_swedish_mobile_numbers_in_every_usual_spelling_are_one_number(typed: str) -> None:
    assert phone.normalise(typed) == "+46701234567"
    assert phone.national("+46701234567") == "070-123 45 67"


@pytest.mark.parametrize(("typed", "e164", "shown"), [("010-103 60 00", "+46101036000", "010-103 60 00"),
                                                      ("08-123 456 78", "+46812345678", "08-123 456 78"),
                                                      ("0480-45 00 00", "+46480450000", "0480450000")])
def test_landline_and_010_numbers(typed: str, e164: str, shown: str) -> None:
    assert phone.normalise(typed) == e164
    assert phone.national(e164) == shown


@pytest.mark.parametrize("typed", ["12345", "070-123", "070-123 45 67 89 0", "+44 20 7946 0958", "ring mig",
                                   "070-12E 45 67", "٠٧٠١٢٣٤٥٦٧", "+46 0", "0"])
def test_what_is_not_a_swedish_number(typed: str) -> None:
    assert phone.normalise(typed) is None


def test_an_urgent_order_needs_the_callback_number_on_validate_and_submit(ad: Adapters, client: TestClient) -> None:
    before = order_count(ad)
    for path in ("/api/orders/validate", "/api/orders"):
        r = client.post(path, json=body(urgent=True, patient_personal_number="1"), headers=as_(CLINICIAN))
        assert r.status_code == 422, r.text
        # Every problem at once, the missing number among them, said for its field.
        assert codes(r) == {"callback_phone": "required", "patient_personal_number": "invalid_personal_number"}
        msg = next(e["message"] for e in r.json()["errors"] if e["field"] == "callback_phone")
        assert msg == "Ange ditt telefonnummer: det krävs när beställningen är brådskande."
        bad = client.post(path, json=body(urgent=True, callback_phone="070-12"), headers=as_(CLINICIAN))
        assert bad.status_code == 422 and codes(bad) == {"callback_phone": "invalid_phone"}
        wrong_type = client.post(path, json=body(callback_phone=701234567), headers=as_(CLINICIAN))
        assert wrong_type.status_code == 422 and codes(wrong_type) == {"callback_phone": "invalid_phone"}
    assert order_count(ad) == before
    # Not urgent: no number needed (and one given is kept).
    assert client.post("/api/orders/validate", json=body(), headers=as_(CLINICIAN)).status_code == 200


def test_the_number_is_stored_normalised_and_shown_to_those_who_call_back(ad: Adapters, client: TestClient) -> None:
    out = submit(client, body(urgent=True, callback_phone="+46 70 123 45 67"))
    ref = out["reference"]
    with ad.db.session() as s:
        assert s.scalar(select(Order.callback_phone).where(Order.reference == ref)) == "+46701234567"
    for user in (CLINICIAN, ONCALL, SUPPORT, ADMIN):
        assert read(client, ref, user)["callback_phone"] == "+46701234567", user
    for user in (ASSESSOR, HEAD, BAKJOUR, ACCOUNTADMIN):
        assert read(client, ref, user)["callback_phone"] is None, user
    assert client.get(f"/api/orders/{ref}", headers=as_(CLINICIAN2)).status_code == 403


def test_the_number_is_printed_on_the_paper_form_and_goes_nowhere_else(ad: Adapters, client: TestClient) -> None:
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext (poppler-utils) is needed: make sysdeps"
    ref = submit(client, body(urgent=True, callback_phone="0701234567"))["reference"]
    pdf = client.get(f"/api/orders/{ref}/paper.pdf", headers=as_(CLINICIAN))
    assert pdf.status_code == 200
    text = subprocess.run([tool, "-layout", "-", "-"], input=pdf.content, capture_output=True, timeout=60,
                          check=True).stdout.decode()
    assert "Telefon för återuppringning" in text and "070-123 45 67" in text
    # Staff data, but still only in the order's row: not in the audit log's details, nor in any email.
    with ad.db.session() as s:
        details = [str(e.detail) for e in s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref))]
        mails = [m for m in s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == ref))]
        assert mails, "the urgent order pages on-call by email"
        for m in mails:
            assert "1234567" not in m.subject + m.body_text + m.body_html
    assert details and not any("1234567" in d for d in details)


def test_the_typed_form_printed_on_paper_carries_the_number(client: TestClient) -> None:
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext (poppler-utils) is needed: make sysdeps"
    r = client.post("/api/paper-forms/seal_or_lock.pdf", json=body(urgent=True, callback_phone="+46101036000"),
                    headers=as_(CLINICIAN))
    assert r.status_code == 200, r.text
    text = subprocess.run([tool, "-layout", "-", "-"], input=r.content, capture_output=True, timeout=60,
                          check=True).stdout.decode()
    assert "010-103 60 00" in text
    bad = client.post("/api/paper-forms/seal_or_lock.pdf", json=body(callback_phone="ring mig"), headers=as_(CLINICIAN))
    assert bad.status_code == 422 and codes(bad) == {"callback_phone": "invalid_phone"}  # a wrong number is not printed


def test_a_stored_urgent_order_without_a_number_is_still_checked_again_and_goes_on(ad: Adapters,
                                                                                    client: TestClient) -> None:
    """Orders made urgent later (or before the number existed) have none: the run's re-check must not
    reject them, only digital intake asks for it."""
    from tasks.steps import stages
    ref = submit(client, body())["reference"]
    with ad.db.session() as s:
        order = s.scalars(select(Order).where(Order.reference == ref)).one()
        order.urgent = True
        order.callback_phone = None
        from tasks.steps.orders import stored_request
        raw = stored_request(order)
    from models.rules import check_order
    from tasks.steps.orders import rule_context
    with ad.db.session() as s:
        assert check_order(raw, rule_context(ad, s, raw, ad.now(), "system", "revalidate")).ok
    assert stages.receive(ad, ref) in ("awaiting_assessment", "awaiting_callback")


# --- item 5: assessments that make sense --------------------------------------------------------------

def test_the_assessment_rule_itself() -> None:
    assert check_assessment(ASSESS, restricts=True) == []
    assert check_assessment({**ASSESS, "harm_found": False, "decision": "do_not_restrict"}, restricts=True) == []
    both = check_assessment({"harm_found": False, "decision": "restrict", "rationale": "  "}, restricts=True)
    assert [(p.field, p.code) for p in both] == [("rationale", "required"), ("decision", "inconsistent_assessment")]
    # A restore (or a grant) goes ahead exactly when there is no risk of harm in giving access back.
    assert check_assessment({**ASSESS, "harm_found": False}, restricts=False) == []
    assert [p.code for p in check_assessment({**ASSESS, "harm_found": False}, restricts=None)] == []
    assert (restricts_access("seal_or_lock", None), restricts_access("block_guardian", None),
            restricts_access("restore_access", None), restricts_access("minor_access", True),
            restricts_access("minor_access", False)) == (True, True, False, False, True)


def test_an_inconsistent_or_unexplained_assessment_is_refused_with_every_problem(ad: Adapters,
                                                                                 client: TestClient) -> None:
    ref = submit(client, body())["reference"]
    url = f"/api/orders/{ref}/assessment"
    r = client.post(url, json={"harm_found": False, "decision": "restrict", "rationale": ""}, headers=as_(ASSESSOR))
    assert r.status_code == 422, r.text
    assert codes(r) == {"rationale": "required", "decision": "inconsistent_assessment"}
    r = client.post(url, json={"harm_found": False, "decision": "restrict", "rationale": "Ingen risk."},
                    headers=as_(ASSESSOR))
    assert r.status_code == 422 and codes(r) == {"decision": "inconsistent_assessment"}
    r = client.post(url, json={"harm_found": True, "decision": "restrict"}, headers=as_(ASSESSOR))
    assert r.status_code == 422 and codes(r) == {"rationale": "required"}
    assert read(client, ref, ADMIN)["status"] == "awaiting_assessment"  # nothing was stored
    # The service layer refuses the inconsistency too (a caller that is not the API or the form).
    from flows import commands
    from tasks.steps import orders
    with pytest.raises(orders.Invalid):
        asyncio.run(commands.decide(ad, ref, "harm_assessment", ASSESSOR, {"harm_found": False, "decision": "restrict"}))
    assert client.post(url, json=ASSESS, headers=as_(ASSESSOR)).status_code == 202
    assert read(client, ref, ADMIN)["status"] == "awaiting_approval"


def test_the_assessment_form_reports_the_same_problems_at_once() -> None:
    from starlette.datastructures import FormData
    decision, errors, _ = parse_decision("harm_assessment", FormData(
        [("harm_found", "no"), ("decision", "restrict"), ("rationale", ""), ("review_after_days", "abc")]), True)
    assert decision is None
    assert set(errors) == {"rationale", "decision", "review_after_days"}
    assert "risk för men" in errors["decision"] and errors["rationale"] == "Skriv en motivering till beslutet: den krävs."
    ok, none, _ = parse_decision("harm_assessment", FormData(
        [("harm_found", "yes"), ("decision", "restrict"), ("rationale", "Risk."), ("review_after_days", "90")]), True)
    assert ok is not None and none == {}
    restore, fine, _ = parse_decision("harm_assessment", FormData(
        [("harm_found", "no"), ("decision", "restrict"), ("rationale", "Kan hävas.")]), False)
    assert restore is not None and fine == {}


# --- item 4: the stages with their facts --------------------------------------------------------------

def test_the_order_shows_its_stages_with_who_decided_and_the_assessment(client: TestClient) -> None:
    ref = submit(client, body())["reference"]
    first = {st["stage"]: st for st in read(client, ref, CLINICIAN)["stages"]}
    assert [first[s]["state"] for s in ("callback", "harm_assessment", "approval", "execution")] == \
        ["not_required", "waiting", "pending", "pending"]
    assert first["callback"]["required"] is False and first["callback"]["rule"] == "not_urgent"
    assert first["harm_assessment"]["rule"] == "care_initiative_harm_test" and first["harm_assessment"]["role"] == "assessor"
    assert client.post(f"/api/orders/{ref}/assessment", json=ASSESS, headers=as_(ASSESSOR)).status_code == 202
    for user in (CLINICIAN, ASSESSOR, HEAD, BAKJOUR, SUPPORT, ONCALL, ACCOUNTADMIN, ADMIN):
        got = {st["stage"]: st for st in read(client, ref, user)["stages"]}
        done = got["harm_assessment"]
        assert (done["state"], done["decided_by"]) == ("done", ASSESSOR), user
        assert done["outcome"] == {"harm_found": True, "decision": "restrict", "rationale": "Risk för men.",
                                   "review_after_days": 180}
        assert done["decided_at"].endswith(("+01:00", "+02:00"))  # Swedish time, as the rest of the answer
        assert got["approval"]["state"] == "waiting" and got["approval"]["role"] == "head_of_department"
    assert client.post(f"/api/orders/{ref}/approval", json={"approved": True, "comment": "ok"},
                       headers=as_(HEAD)).status_code == 202
    final = {st["stage"]: st for st in read(client, ref, CLINICIAN)["stages"]}
    assert final["approval"]["outcome"] == {"approved": True, "comment": "ok"}
    assert final["execution"]["state"] == "done"


def test_the_contract_s_answer_is_only_added_to(client: TestClient) -> None:
    doc = client.get("/openapi.json", headers=as_(CLINICIAN)).json()
    view = doc["components"]["schemas"]["OrderView"]
    assert {"reference", "order_type", "status", "urgent", "patient", "created_at", "due_at", "callback_due_at",
            "history"} <= set(view["required"])
    assert "stages" in view["properties"] and "callback_phone" in view["properties"]
    assert "callback_phone" in doc["components"]["schemas"]["OrderRequest"]["properties"]


# --- item 6: duplicates -------------------------------------------------------------------------------

def test_an_open_order_of_the_same_type_and_action_is_named_in_a_warning(ad: Adapters, client: TestClient) -> None:
    p = patient()
    first = submit(client, body(patient_personal_number=p, actions=["seal_journal"]))["reference"]

    def warned(b: dict[str, Any]) -> list[str]:
        r = client.post("/api/orders/validate", json=b, headers=as_(CLINICIAN2))
        assert r.status_code in (200, 422), r.text  # warnings come with errors too
        return [w["message"] for w in r.json()["warnings"] if w["code"] == "duplicate_open_order"]

    [msg] = warned(body(patient_personal_number=p, actions=["seal_journal", "lock_login"]))
    assert first in msg
    assert p not in msg and p.replace("-", "") not in msg
    assert warned(body(patient_personal_number=p, actions=["lock_login"])) == []       # no overlapping action
    assert warned(body("restore_access", patient_personal_number=p, actions=["seal_journal"])) == []  # other type
    assert warned(body()) == []                                                        # another patient
    # Submit warns too, and still stores the order (warnings never block the API).
    second = client.post("/api/orders", json=body(patient_personal_number=p, actions=["seal_journal"]),
                         headers=as_(CLINICIAN2))
    assert second.status_code == 201
    assert any(w["code"] == "duplicate_open_order" and first in w["message"] for w in second.json()["warnings"])
    # Once the first is withdrawn, only the second is open.
    assert client.post(f"/api/orders/{first}/cancel", json={"reason": "dubblett"}, headers=as_(CLINICIAN)).status_code == 200
    [msg] = warned(body(patient_personal_number=p, actions=["seal_journal"]))
    assert first not in msg and second.json()["reference"] in msg
    # Telling someone about another order is a search by personal number: audited, with its purpose.
    with ad.db.session() as s:
        purposes = [e.detail.get("purpose") for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "search_by_personal_number", AuditEvent.patient_pnr == p.replace("-", "")))]
    assert purposes.count("submit") == 1 and purposes.count("validate") >= 2


def test_a_guardian_block_overlaps_only_for_the_same_guardian(client: TestClient) -> None:
    b = body("block_guardian")
    ref = submit(client, b)["reference"]
    same = client.post("/api/orders/validate", json=b, headers=as_(CLINICIAN))
    assert "duplicate_open_order" in {w["code"] for w in same.json()["warnings"]} and ref in same.text
    other = client.post("/api/orders/validate", headers=as_(CLINICIAN),
                        json={**b, "guardian_personal_number": pnr(born_years_ago(47, extra_days=117))})
    assert "duplicate_open_order" not in other.text


def test_a_replayed_submit_is_not_its_own_duplicate(client: TestClient) -> None:
    b = body()
    key = {"Idempotency-Key": f"facts-{patient()}"}
    first = client.post("/api/orders", json=b, headers={**as_(CLINICIAN), **key})
    again = client.post("/api/orders", json=b, headers={**as_(CLINICIAN), **key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["reference"] == first.json()["reference"]
    assert again.json()["warnings"] == first.json()["warnings"]


# --- the order form: confirmation of a duplicate, one order per form, the care units ------------------

@pytest.fixture(scope="module")
def csrf(client: TestClient) -> str:
    page = client.get("/", headers=as_(CLINICIAN))
    m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert page.status_code == 200 and m
    return m.group(1)


def form_of(client: TestClient, csrf: str, p: str, **extra: str) -> dict[str, Any]:
    page = client.get("/bestall/seal_or_lock", headers=as_(CLINICIAN))
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
    assert key
    return {"csrf_token": csrf, "idempotency_key": key.group(1), "initiative": "care", "actions": "seal_journal",
            "patient_personal_number": p, "reason": "Hot", "care_unit_hsa_id": "DEMO-KALMAR-UNIT", **extra}


def test_the_form_asks_to_confirm_a_duplicate_and_a_resent_form_makes_no_second_order(
        ad: Adapters, client: TestClient, csrf: str) -> None:
    p = patient()
    first_form = form_of(client, csrf, p)
    r = client.post("/bestall/seal_or_lock", data=first_form, headers=as_(CLINICIAN), follow_redirects=False)
    assert r.status_code == 303, r.text
    first = re.search(r"RO-\d{4}-\d{6}", r.headers["location"])
    assert first
    # The same form sent again (back, then send): the first answer again, no second order.
    before = order_count(ad)
    again = client.post("/bestall/seal_or_lock", data=first_form, headers=as_(CLINICIAN), follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == r.headers["location"]
    # A fresh form (back re-loads the page: a new token) for the same patient and action: asked to confirm.
    second_form = form_of(client, csrf, p)
    held = client.post("/bestall/seal_or_lock", data=second_form, headers=as_(CLINICIAN), follow_redirects=False)
    assert held.status_code == 409
    assert first.group(0) in held.text and 'name="confirm_duplicate"' in held.text
    assert "Jag har kontrollerat: det är en ny beställning" in held.text
    assert order_count(ad) == before
    # Sent again without ticking the box: held again, and the box says why.
    unticked = client.post("/bestall/seal_or_lock", data={**second_form, "duplicate_shown": "1"},
                           headers=as_(CLINICIAN), follow_redirects=False)
    assert unticked.status_code == 409 and 'class="error-summary"' in unticked.text
    assert "Bekräfta att det är en ny beställning" in unticked.text and order_count(ad) == before
    sent = client.post("/bestall/seal_or_lock", data={**second_form, "confirm_duplicate": "1"},
                       headers=as_(CLINICIAN), follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] != r.headers["location"]
    assert "duplicate_open_order" not in sent.headers["location"]  # confirmed: the receipt need not repeat it
    assert order_count(ad) == before + 1


def test_the_form_asks_for_the_callback_number_with_field_specific_swedish_errors(client: TestClient,
                                                                                  csrf: str) -> None:
    data = form_of(client, csrf, "", urgent="1", initiative="")
    del data["actions"]
    r = client.post("/bestall/seal_or_lock", data=data, headers=as_(CLINICIAN))
    assert r.status_code == 422
    page = r.text
    assert "Ditt telefonnummer för återuppringning" in page and 'type="tel"' in page
    for text in ("Välj vems initiativ beställningen är.", "Välj minst en åtgärd.",
                 "Ange ditt telefonnummer: det krävs när beställningen är brådskande.",
                 "Ange patientens personnummer eller samordningsnummer."):
        assert page.count(text) >= 2, text  # beside the field and in the summary
    assert "Fältet måste fyllas i." not in page
    summary = page[page.index('class="error-summary"'):page.index("</div>", page.index('class="error-summary"'))]
    assert "Vems initiativ är beställningen? Välj vems initiativ" in summary
    assert "<legend>Vems initiativ är beställningen?</legend>" in page
    ok = client.post("/bestall/seal_or_lock", data={**form_of(client, csrf, patient()), "urgent": "1",
                                                    "callback_phone": PHONE},
                     headers=as_(CLINICIAN), follow_redirects=False)
    assert ok.status_code == 303, ok.text


def test_the_form_lists_only_the_clinician_s_own_region_and_helps_typing(client: TestClient) -> None:
    page = client.get("/bestall/seal_or_lock", headers=as_(CLINICIAN)).text
    units = re.findall(r'<option value="([^"]+)" data-region="([^"]+)"', page)
    assert units and {r for _, r in units} == {"kalmar"}
    other = client.get("/bestall/seal_or_lock", headers=as_(OTHER_REGION_CLINICIAN)).text
    assert {r for _, r in re.findall(r'<option value="([^"]+)" data-region="([^"]+)"', other)} == {"ostergotland"}
    assert re.search(r'id="patient_personal_number"[^>]*inputmode="numeric"', page)
    assert 'data-count-for="reason"' in page and 'aria-live="polite"' in page
    assert re.search(r'formtarget="_blank"[^>]*formaction="/api/paper-forms/seal_or_lock\.pdf', page)


def test_the_care_unit_of_another_region_is_refused(client: TestClient, csrf: str) -> None:
    data = form_of(client, csrf, patient(), care_unit_hsa_id="DEMO-OSTERGOTLAND-UNIT")
    r = client.post("/bestall/seal_or_lock", data=data, headers=as_(CLINICIAN))
    assert r.status_code == 422 and "Du kan bara beställa för vårdenheter i din egen region." in r.text


def test_user_type_is_what_the_pages_use() -> None:
    # The role sets the two readers' rules are written against (forms/actions.py).
    from forms.actions import sees_callback_phone, sees_stages
    u = User("X", "X", ("assessor",), None, "kalmar", "header")
    assert sees_stages(u, "Y") and not sees_callback_phone(u, "Y") and sees_callback_phone(u, "X")
