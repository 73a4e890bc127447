"""Registering received, signed paper orders (reservrutin): `POST /api/paper-orders` and
`POST /api/orders/{reference}/resume-digital`, against the real app (in-process ASGI, or on uvicorn for the
browser) and the orders database, with the in-process engine (flows/inprocess.py): where a run must start,
it starts, and goes as far as it can, inside the request.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flows.bootstrap import build, in_process
from flows.inprocess import FakeRun, InProcessEngine
from models.clock import STOCKHOLM
from models.tables import AuditEvent, Order, OutboxMessage, RegistryPerson
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.events import RecordedEvents
from tasks.adapters.gateway import ConfiguredGateway
from tasks.adapters.settings import Settings
from tasks.steps import orders
from tests.e2e import PATIENT, aged, body, decide, status, submit, text_of, wait_mails

pytest.register_assert_rewrite("tests.webapp", "tests.test_pages")
from tests.test_pages import browser, visit  # noqa: E402, F401  (the browser fixtures, with the axe check)

pytest_plugins = ["tests.webapp"]
CLINICIAN, SUPPORT, HEAD = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-SUPPORT", "DEMO-KALMAR-HEAD"
OTHER_SUPPORT = "DEMO-OSTERGOTLAND-SUPPORT"


@pytest.fixture(scope="module")
def app(ad: Adapters) -> FastAPI:
    from forms.app import create_app
    return create_app(ad)


def call(app: FastAPI, method: str, url: str, user: str | None, json: Any = None,
         peer: str = "127.0.0.1", **headers: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 5555))
        h = {"X-Remote-User": user} if user else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                     headers={**h, **headers}) as c:
            return await c.request(method, url, json=json)
    return asyncio.run(go())


def today() -> str:
    return datetime.now(STOCKHOLM).date().isoformat()


def paper(b: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**b, "received_on": today(), "signature_checked": True, **extra}


def codes(r: httpx.Response) -> dict[str, str]:
    return {e["field"]: e["code"] for e in r.json()["errors"]}


def order_count(ad: Adapters) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Order)) or 0)


def row(ad: Adapters, reference: str) -> Order:
    with ad.db.session() as s:
        return orders.get(s, reference)


def audit_actions(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def run_of(ad: Adapters, run_id: str | None) -> FakeRun:
    """The in-process engine's run by its id (the order's `flow_run_id`)."""
    assert isinstance(ad.engine, InProcessEngine) and run_id is not None
    return ad.engine.runs[run_id]


def test_new_paper_order_gets_channel_paper_and_its_run_starts(app: FastAPI, ad: Adapters) -> None:
    r = call(app, "POST", "/api/paper-orders", SUPPORT,
             paper(body("seal_or_lock", patient_personal_number=aged(47, 318)), orderer_hsa_id=CLINICIAN))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["channel"] == "paper" and out["continued"] is False and out["status"] == "submitted"
    ref = out["reference"]
    order = row(ad, ref)
    assert order.channel == "paper" and order.submitted_by == CLINICIAN and order.paper_registered_by == SUPPORT
    assert order.paper_received_on is not None
    assert order.paper_received_on.astimezone(STOCKHOLM).date().isoformat() == today()
    registered = [e for e in audit_actions(ad, ref) if e.action == "paper_registered"]
    assert len(registered) == 1 and registered[0].actor == SUPPORT
    assert registered[0].detail["signature_checked"] is True
    # Its run starts and the normal routine takes it from the beginning.
    assert order.status == "awaiting_assessment"
    run = run_of(ad, order.flow_run_id)
    assert "channel:paper" in run.tags and run.reference == ref and run.flow_name == "seal-or-lock"
    assert (run.state, run.waiting_key) == ("paused", "harm-assessment-0")


def test_signature_not_checked_is_refused_with_every_error(app: FastAPI, ad: Adapters) -> None:
    before = order_count(ad)
    future = (datetime.now(STOCKHOLM).date() + timedelta(days=3)).isoformat()
    r = call(app, "POST", "/api/paper-orders", SUPPORT,
             paper(body("seal_or_lock", patient_personal_number="19121212-1213"), signature_checked=False,
                   received_on=future))
    assert r.status_code == 422, r.text
    assert codes(r) == {"signature_checked": "signature_not_checked", "received_on": "date_in_future",
                        "patient_personal_number": "invalid_personal_number"}
    assert all(e["message"] for e in r.json()["errors"])
    missing = call(app, "POST", "/api/paper-orders", SUPPORT,
                   {k: v for k, v in paper(body()).items() if k not in ("signature_checked", "received_on")})
    assert missing.status_code == 422
    assert codes(missing) == {"signature_checked": "required", "received_on": "required"}
    odd = call(app, "POST", "/api/paper-orders", SUPPORT,
               paper(body(), signature_checked="yes", received_on="igår", reference="nonsense",
                     orderer_hsa_id="DEMO-NOBODY"))
    assert codes(odd) == {"signature_checked": "invalid_value", "received_on": "invalid_date",
                          "reference": "invalid_reference", "orderer_hsa_id": "unknown_staff"}
    unknown = call(app, "POST", "/api/paper-orders", SUPPORT, paper(body(), reference="RO-2020-999999"))
    assert unknown.status_code == 422 and codes(unknown) == {"reference": "unknown_reference"}
    assert order_count(ad) == before


def test_paper_fallback_order_registered_by_reference_continues(app: FastAPI, ad: Adapters, smtp: Path) -> None:
    patient = aged(52, 436)
    ref = submit(ad, body("seal_or_lock", patient_personal_number=patient))
    assert status(ad, ref) == "awaiting_assessment"
    old_run = str(row(ad, ref).flow_run_id)
    assert run_of(ad, old_run).state == "paused"  # suspended, waiting for the assessor
    # The order went to the paper routine while it waited for the harm assessment.
    with ad.db.session() as s:
        orders.transition(s, orders.get(s, ref), "paper_fallback", actor="system", action="gateway_unavailable")
    count = order_count(ad)

    wrong = call(app, "POST", "/api/paper-orders", SUPPORT,
                 paper({"patient_personal_number": aged(52, 437), "order_type": "seal_or_lock"}, reference=ref))
    assert wrong.status_code == 422 and codes(wrong) == {"patient_personal_number": "does_not_match_order"}
    assert row(ad, ref).status == "paper_fallback"

    r = call(app, "POST", "/api/paper-orders", SUPPORT,
             paper({"patient_personal_number": patient, "order_type": "seal_or_lock"}, reference=ref.lower()))
    assert r.status_code == 201, r.text
    assert r.json()["reference"] == ref and r.json()["continued"] is True
    assert r.json()["status"] == "awaiting_assessment"  # the stage it was at, not the start
    assert order_count(ad) == count
    order = row(ad, ref)
    assert order.paper_registered_by == SUPPORT and order.paper_received_on is not None
    assert order.channel == "paper"  # the signed paper form is now the order's record
    assert order.flow_run_id and order.flow_run_id != old_run
    # The run that waited at the assessment was cancelled, so only the new one continues.
    assert run_of(ad, old_run).state == "cancelled"
    back = [e for e in audit_actions(ad, ref) if e.action == "paper_registered"]
    assert [(e.from_status, e.to_status, e.actor) for e in back] == [("paper_fallback", "awaiting_assessment", SUPPORT)]
    assert back[0].channel == "app" and back[0].detail == {
        "received_on": today(), "signature_checked": True, "continued": True, "previous_channel": "digital"}
    new_run = run_of(ad, order.flow_run_id)
    assert "channel:paper" in new_run.tags and (new_run.state, new_run.waiting_key) == ("paused", "harm-assessment-0")

    again = call(app, "POST", "/api/paper-orders", SUPPORT, paper({}, reference=ref))
    assert again.status_code == 409 and codes(again) == {"": "wrong_status"}

    decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    assert status(ad, ref) == "awaiting_approval"
    decide(ad, ref, "approval", HEAD, {"approved": True})
    assert status(ad, ref) == "completed" and new_run.state == "completed"
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    # A completed order is no longer in the paper routine.
    done = call(app, "POST", f"/api/orders/{ref}/resume-digital", SUPPORT, json={})
    assert done.status_code == 409 and codes(done) == {"": "wrong_status"}
    other = call(app, "POST", f"/api/orders/{ref}/resume-digital", OTHER_SUPPORT, json={})
    assert other.status_code == 403 and codes(other) == {"": "other_region"}


def test_identity_and_roles(app: FastAPI, ad: Adapters) -> None:
    b = paper(body())
    assert call(app, "POST", "/api/paper-orders", None, b).status_code == 401
    assert call(app, "POST", "/api/paper-orders", "DEMO-NOBODY", b).status_code == 401
    # The header counts only from a trusted proxy address.
    assert call(app, "POST", "/api/paper-orders", SUPPORT, b, peer="203.0.113.7").status_code == 401
    for who in (CLINICIAN, HEAD, "DEMO-ADMIN", "DEMO-KALMAR-ONCALL"):
        r = call(app, "POST", "/api/paper-orders", who, b)
        assert r.status_code == 403 and codes(r) == {"": "wrong_role"}, who
    other = call(app, "POST", "/api/paper-orders", OTHER_SUPPORT, b)
    assert other.status_code == 403 and codes(other) == {"": "other_region"}

    before = order_count(ad)
    assert call(app, "POST", "/api/orders/RO-2026-000001/resume-digital", CLINICIAN, json={}).status_code == 403
    assert call(app, "POST", "/api/orders/RO-2020-999999/resume-digital", SUPPORT, json={}).status_code == 404
    assert call(app, "POST", "/api/orders/not-a-ref/resume-digital", SUPPORT, json={}).status_code == 404
    assert order_count(ad) == before


# --- "fill in digitally, print, sign": POST /api/paper-forms/{order_type}.pdf ------------------------

def pdf_text(data: bytes) -> str:
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, check=True).stdout
    return re.sub(r"[ \t]+", " ", out.decode())


def pdf_words(data: bytes) -> str:
    """Reading order without whitespace or hyphens: a value that wraps inside its box reads as one word
    (pdftotext drops the hyphen it wrapped at)."""
    out = subprocess.run(["pdftotext", "-", "-"], input=data, capture_output=True, check=True).stdout
    return re.sub(r"[\s-]+", "", out.decode())


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(web: TestClient, hsa_id: str) -> None:
    """The embedded login page, as a person uses it: the session cookie stays in the client."""
    token = _csrf(web.get("/login").text)
    r = web.post("/login", data={"hsa_id": hsa_id, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.fixture()
def web(ad: Adapters) -> Iterator[TestClient]:
    from forms.app import create_app
    with TestClient(create_app(ad), client=("127.0.0.1", 40001), raise_server_exceptions=False) as c:
        yield c


@contextmanager
def orders_database_unreachable(web: TestClient, settings: Settings) -> Iterator[None]:
    """As tests/test_faults.py: nothing listens on port 9, so every connection is refused at once. The app
    `web` talks to gets adapters with that database meanwhile (same settings: the session cookie holds)."""
    app: Any = web.app
    kept = app.state.adapters
    unreachable = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    app.state.adapters = in_process(settings, db=unreachable)
    try:
        yield
    finally:
        app.state.adapters = kept
        unreachable.dispose()


def printed_audits(ad: Adapters) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.action == "paper_form_printed")) or 0)


def test_a_filled_paper_form_prints_the_posted_values_and_stores_nothing(web: TestClient, ad: Adapters) -> None:
    patient, guardian = aged(9, 552), aged(41, 553)
    b = body("block_guardian", patient_personal_number=patient.replace("-", ""), guardian_personal_number=guardian,
             urgent=True, reason="Orosanmälan <b>inlämnad</b>")
    before, audits = order_count(ad), printed_audits(ad)
    r = web.post("/api/paper-forms/block_guardian.pdf", json=b, headers={"X-Remote-User": CLINICIAN})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf" and r.headers["X-Blank-Fields"] == ""
    text = pdf_text(r.content)
    for value in (patient, guardian, "Orosanmälan <b>inlämnad</b>", "DEMO-KALMAR-UNIT", "Demoenheten Region Kalmar",
                  "Referens: fylls i av supporten", "Regionstab Kansli", "under beredskapstid 17:00–07:00"):
        assert value in text, value
    assert "DEMOKALMARCLINICIAN" in pdf_words(r.content)  # the orderer's HSA-id wraps in its narrow box
    assert "RO-20" not in text  # no reference: nothing was stored
    title = pypdf.PdfReader(io.BytesIO(r.content)).metadata.title  # type: ignore[union-attr]
    assert title == "Borttagande av direktåtkomst för vårdnadshavare – ifylld reservblankett, Region Kalmar län"
    assert order_count(ad) == before
    assert printed_audits(ad) == audits + 1  # the database answered: the print is in the audit log
    with ad.db.session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "paper_form_printed")
                       .order_by(AuditEvent.id.desc())).first()
        assert ev is not None and ev.actor == CLINICIAN and ev.patient_pnr == patient.replace("-", "")
        assert ev.order_reference is None and patient.replace("-", "") not in str(ev.detail)


def test_an_incomplete_form_prints_with_blanks_but_wrong_answers_are_refused(web: TestClient, ad: Adapters) -> None:
    clinician = {"X-Remote-User": CLINICIAN}
    r = web.post("/api/paper-forms/seal_or_lock.pdf?region=kalmar", json={"reason": "Hot"}, headers=clinician)
    assert r.status_code == 200, r.text
    assert r.headers["X-Blank-Fields"] == "actions,care_unit_hsa_id,initiative,patient_personal_number"
    printed = pdf_text(r.content)
    assert printed.count("☒") == 1 and "☐ Ja ☒ Nej" in printed  # only "urgent": false is the API's default
    restore = body("restore_access", initiative="patient", actions=["seal_journal"],
                   patient_personal_number=aged(33, 564))
    r = web.post("/api/paper-forms/restore_access.pdf", json=restore, headers=clinician)
    assert r.status_code == 422 and codes(r) == {"actions": "nothing_to_restore"}  # the registry says so
    with ad.db.session() as s:
        s.merge(RegistryPerson(pnr=aged(33, 564).replace("-", ""), sealed_by_initiative="patient",
                               sealed_by_region="kalmar", sealed_by_order="RO-2026-000000",
                               blocked_guardians=[], minor_access=[]))
    r = web.post("/api/paper-forms/restore_access.pdf", json=restore, headers=clinician)
    assert r.status_code == 200, r.text
    assert r.headers["X-Blank-Fields"] == "identity_checked_in_person"  # a box the signer ticks by hand
    before, audits = order_count(ad), printed_audits(ad)
    wrong = web.post("/api/paper-forms/minor_access.pdf", headers=clinician, json=body(
        "minor_access", patient_personal_number="19121212-1213", care_unit_hsa_id="DEMO-NOWHERE",
        reason="x" * 2001, initiative="patient", minor_access={"grant": True, "recipient": "guardian"}))
    assert wrong.status_code == 422, wrong.text
    assert codes(wrong) == {"patient_personal_number": "invalid_personal_number", "reason": "reason_too_long",
                            "care_unit_hsa_id": "unknown_care_unit", "initiative": "care_only"}
    assert wrong.json()["blank_fields"] == ["guardian_personal_number", "minor_access.child_consent"]
    for garbage in ([1, 2], "text", {"order_type": "seal_or_lock", "urgent": "ja", "region": "kalmar"},
                    {"order_type": "restore_access", "region": "kalmar"}, {"initiative": "care"}):
        r = web.post("/api/paper-forms/seal_or_lock.pdf", json=garbage, headers=clinician)
        assert r.status_code == 422, (garbage, r.text)
    assert codes(web.post("/api/paper-forms/seal_or_lock.pdf", json={}, headers=clinician)) == {"region": "required"}
    assert web.post("/api/paper-forms/seal.pdf", json={}, headers=clinician).status_code == 404
    assert web.post("/api/paper-forms/seal_or_lock.pdf", content="x", headers=clinician).status_code == 415
    assert (order_count(ad), printed_audits(ad)) == (before, audits)


def test_printing_needs_an_identity_a_clinician_and_the_csrf_token(web: TestClient) -> None:
    b = body("seal_or_lock")
    assert web.post("/api/paper-forms/seal_or_lock.pdf", json=b).status_code == 401
    assert web.post("/api/paper-forms/seal_or_lock.pdf", json=b, headers={"X-Remote-User": "DEMO-NOBODY"}).status_code == 401
    r = web.post("/api/paper-forms/seal_or_lock.pdf", json=b, headers={"X-Remote-User": SUPPORT})
    assert r.status_code == 403 and codes(r) == {"": "wrong_role"}
    login(web, CLINICIAN)
    r = web.post("/api/paper-forms/seal_or_lock.pdf", json=b)  # the cookie alone: a cross-site post could do that
    assert r.status_code == 403 and codes(r) == {"": "csrf_failed"}
    token = _csrf(web.get("/").text)
    assert web.post("/api/paper-forms/seal_or_lock.pdf", json=b, headers={"X-CSRF-Token": token}).status_code == 200
    form = {"patient_personal_number": PATIENT, "csrf_token": "forged"}
    assert web.post("/api/paper-forms/seal_or_lock.pdf?region=kalmar", data=form).status_code == 403


def test_the_filled_form_prints_with_the_orders_database_unreachable(web: TestClient, ad: Adapters,
                                                                     settings: Settings) -> None:
    # Logged in (embedded login) and the order form loaded while the database still answered.
    login(web, CLINICIAN)
    page = web.get("/bestall/seal_or_lock")
    assert 'formaction="/api/paper-forms/seal_or_lock.pdf?region=kalmar"' in page.text
    assert "Skriv ut ifylld pappersblankett" in page.text
    token = _csrf(page.text)
    patient = aged(36, 561)
    audits = printed_audits(ad)
    with orders_database_unreachable(web, settings):
        assert web.post("/api/orders", json=body(), headers={"X-Remote-User": CLINICIAN}).status_code == 503
        # The order form's own fields, as the button posts them.
        r = web.post("/api/paper-forms/seal_or_lock.pdf?region=kalmar", data={
            "csrf_token": token, "idempotency_key": "abc", "patient_personal_number": patient,
            "initiative": "care", "actions": ["seal_journal", "lock_login"], "urgent": "1",
            "reason": "Hot mot patienten", "care_unit_hsa_id": "DEMO-KALMAR-UNIT"})
        assert r.status_code == 200, r.text
        text = pdf_text(r.content)
        for value in (patient, "Hot mot patienten", "DEMO-KALMAR-UNIT", "Referens: fylls i av supporten",
                      "Regionstab Kansli", "☒ Försegla 1177 journal", "☒ Låsa inloggning till 1177 e-tjänster",
                      "☒ På begäran av hälso- och sjukvårdspersonal"):
            assert value in text, value
        assert "DEMOKALMARCLINICIAN" in pdf_words(r.content) and "Demoenheten" not in text  # no directory: no names
        # And as JSON by the trusted header (no directory to look the person up in: the proxy vouches).
        r = web.post("/api/paper-forms/restore_access.pdf", headers={"X-Remote-User": CLINICIAN},
                     json=body("restore_access", care_unit_hsa_id="ANY-UNIT-AT-ALL"))
        assert r.status_code == 200, r.text
        assert "ANY-UNIT-AT-ALL" in pdf_text(r.content)  # the directory check waits for the registration
        # A wrong answer is still refused, on a page of its own (the order form needs the database).
        r = web.post("/api/paper-forms/seal_or_lock.pdf?region=kalmar",
                     data={"csrf_token": token, "patient_personal_number": "19121212-1213"})
        assert r.status_code == 422 and "Blanketten kan inte skrivas ut" in r.text
        assert "Ogiltigt personnummer" in r.text and "/api/paper-forms/seal_or_lock.pdf?region=kalmar" in r.text
        assert web.post("/api/paper-forms/seal_or_lock.pdf", json=body()).status_code == 403  # CSRF as ever
    assert printed_audits(ad) == audits  # nothing could be audited, and nothing was kept anywhere else
    # With the database back, a wrong answer shows the order form again with the error and the values kept.
    r = web.post("/api/paper-forms/seal_or_lock.pdf?region=kalmar",
                 data={"csrf_token": token, "patient_personal_number": "19121212-1213", "reason": "Behåll mig"})
    assert r.status_code == 422 and "error-summary" in r.text and "Behåll mig" in r.text
    assert 'id="order-form"' in r.text


# --- the gateway's probe and the sweep that resumes orders on paper ------------------------------------

def test_gateway_probe_and_the_down_flag(ad: Adapters, settings: Settings, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.adapters.gateway import GatewayUnavailable, UnavailableGateway
    assert ConfiguredGateway("simulated").available() and ConfiguredGateway("manual").available()
    assert not ConfiguredGateway("down").available()
    flag = tmp_path / "gateway-down"
    monkeypatch.setenv("RO_GATEWAY_DOWN_FLAG", str(flag))  # the setting, as production's drill sets it
    gateway = in_process(Settings(), db=ad.db).gateway
    assert gateway.down_flag == flag
    assert gateway.available()  # no file: the configured gateway
    flag.touch()
    assert isinstance(gateway.current(), UnavailableGateway) and not gateway.available()
    with pytest.raises(GatewayUnavailable), ad.db.session() as s:
        gateway.apply(s, Order())
    flag.unlink()
    assert gateway.available()


def _on_paper(ad: Adapters, at: datetime, at_stage: str = "executing", **paper_fields: Any) -> str:
    """An order stored without a run whose execution (or another stage) fell back to paper at `at`."""
    out = orders.submit(ad, body("seal_or_lock", patient_personal_number=aged(50, 571)), CLINICIAN, at)
    assert out.order is not None
    with ad.db.session() as s:
        order = orders.get(s, out.order.reference)
        order.stage_plan = {st: {"required": False} for st in ("callback", "harm_assessment", "approval")}
        for name, value in paper_fields.items():
            setattr(order, name, value)
        for stage in ("awaiting_approval", "executing")[:2 if at_stage == "executing" else 1]:
            orders.transition(s, order, stage, actor="system", action="test", at=at)
        orders.transition(s, order, "paper_fallback", actor="system", action="gateway_unavailable", at=at)
        return order.reference


class ScheduledOnly(InProcessEngine):
    """Creates an order's run and leaves it scheduled, as Prefect does until a worker picks it up: what is
    under test is the sweep; what the run does next is the routine's (tested elsewhere)."""

    async def begin(self, run_id: str) -> None:
        return None


def test_the_sweep_resumes_orders_on_paper_when_the_system_answers_backing_off_while_it_does_not(
        ad: Adapters, settings: Settings, tmp_path: Path) -> None:
    from tasks.steps import paper_orders
    flag = tmp_path / "gateway-down"
    flag.touch()
    engine = ScheduledOnly()
    swept = build(settings.model_copy(update={"paper_resume_seconds": 30.0}), db=ad.db, engine=engine,
                  events=RecordedEvents(), gateway=ConfiguredGateway(settings.gateway, flag))
    engine.bind(swept)
    probe = paper_orders.Probe()
    t = datetime.now(STOCKHOLM) + timedelta(days=1)  # a day ahead: the served flows' own sweep leaves these be
    ref = _on_paper(swept, t)
    signed = _on_paper(swept, t, channel="paper", paper_received_on=t)  # its signed form is here: never resumed
    earlier = _on_paper(swept, t, at_stage="awaiting_approval")  # not at execution: the probe cannot vouch for it

    def sweep(after_s: float) -> list[str]:
        return [r for r in asyncio.run(paper_orders.resume_when_back(swept, t + timedelta(seconds=after_s), probe))
                if r in (ref, signed, earlier)]
    try:
        assert sweep(10) == []                       # too soon after the fallback: nothing is probed
        assert probe.after is None
        delays = []
        for at in (31, 61, 121, 241, 481, 781, 1081):  # down: each probe fails and the next waits longer
            assert sweep(at) == []
            delays.append(probe.delay)
        assert delays == [30, 60, 120, 240, 300, 300, 300]  # doubling, at most ten times the first wait
        flag.unlink()
        assert sweep(1100) == []                     # back, but the next probe is not due yet
        assert row(ad, ref).status == "paper_fallback"
        assert sweep(1381) == [ref]
        assert row(ad, ref).status == "executing"
        assert run_of(swept, row(ad, ref).flow_run_id).state == "scheduled"  # a run to execute it was started
        assert row(ad, signed).status == row(ad, earlier).status == "paper_fallback"
        assert row(ad, signed).flow_run_id is None and row(ad, earlier).flow_run_id is None
        back = [e for e in audit_actions(ad, ref) if e.action == "resumed_digital"]
        assert [(e.actor, e.from_status, e.to_status, e.detail) for e in back] == [
            ("system", "paper_fallback", "executing", {"occasion": 1, "why": "gateway_available"})]
        assert probe.after is None and sweep(1382) == []
        # It fails again at execution: the next automatic try waits twice as long (a system that answers the
        # probe but fails the execution does not bounce the order every minute).
        with ad.db.session() as s:
            orders.transition(s, orders.get(s, ref), "paper_fallback", actor="system", action="gateway_unavailable",
                              at=t + timedelta(seconds=1400))
        assert sweep(1431) == [] and sweep(1459) == []
        assert sweep(1461) == [ref]
        assert [e.actor for e in audit_actions(ad, ref) if e.action == "resumed_digital"] == ["system", "system"]
        assert len(engine.runs) == 2  # one run per resume, each under its own key
    finally:
        with ad.db.session() as s:  # left on paper by the test: out of the way of the served flows' own sweep
            for r in (ref, signed, earlier):
                if (o := orders.get(s, r)).status == "paper_fallback":
                    orders.transition(s, o, "cancelled", actor="system", action="cancelled")


def test_the_repair_tells_an_orderer_whose_run_died_before_the_email(ad: Adapters, smtp: Path) -> None:
    from tasks.steps.paper_fallback import REPAIR_AFTER_S, Sweeper
    sweeper = Sweeper()
    now = datetime.now(STOCKHOLM) + timedelta(days=1)  # a day ahead: the served flows' own repair leaves these be
    old = _on_paper(ad, now - timedelta(seconds=REPAIR_AFTER_S + 5), urgent=True)
    fresh = _on_paper(ad, now)  # its own run is about to tell the orderer: left to it
    try:
        told = sweeper.tell_untold(ad, now)
        assert old in told and fresh not in told
        assert [e.detail["occasion"] for e in audit_actions(ad, old) if e.action == "paper_fallback_notified"] == [1]
        assert [e.detail["occasion"] for e in audit_actions(ad, old) if e.action == "paper_form_checked"] == [1]
        assert old not in sweeper.tell_untold(ad, now) and old not in sweeper.tell_untold(ad, now + timedelta(minutes=5))
        # The sweep resumed it and it fell back again: the orderer has the instructions already.
        with ad.db.session() as s:
            o = orders.get(s, old)
            orders.transition(s, o, "executing", actor="system", action="resumed_digital", at=now)
            orders.transition(s, o, "paper_fallback", actor="system", action="gateway_unavailable", at=now)
        later = now + timedelta(seconds=REPAIR_AFTER_S + 5)
        assert old not in sweeper.tell_untold(ad, later) and old not in sweeper.tell_untold(ad, later)
        assert [(e.detail["occasion"], e.detail["why"]) for e in audit_actions(ad, old)
                if e.action == "paper_fallback_unnotified"] == [(2, "told_before")]
        with ad.db.session() as s:
            assert int(s.scalar(select(func.count()).select_from(OutboxMessage)
                                .where(OutboxMessage.order_reference == old)) or 0) == 1
        got = wait_mails(smtp, old, 1)
        assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
        text = re.sub(r"\s+", " ", text_of(got[0]))
        assert ("ring också supporten på 0480-840 38 knappval 2 och invänta uppringning inom 30 minuter under "
                "beredskapstid 17:00–07:00. Skicka sedan blanketten.") in text
    finally:
        with ad.db.session() as s:
            for r in (old, fresh):
                orders.transition(s, orders.get(s, r), "cancelled", actor="system", action="cancelled")


# --- the support centre's page, in a real browser ------------------------------------------------------

@pytest.mark.browser
def test_support_registers_a_paper_order_and_resumes_one_digitally_in_the_browser(visit: Any, live_app: str,  # noqa: F811
                                                                                  ad: Adapters) -> None:
    # On paper while it waited for approval (not at execution, so the served flows' sweep leaves it to the person).
    waiting = _on_paper(ad, datetime.now(STOCKHOLM), at_stage="awaiting_approval")

    v = visit(SUPPORT, "Supporten (Region Kalmar län)")
    page = v.page
    page.get_by_role("link", name="Pappersbeställningar", exact=True).click()
    page.wait_for_url("**/pappersbestallningar")
    assert page.locator(f"tr[id='{waiting}']").count() == 1
    v.check("paper-orders")

    # A blank form filled in by hand: first without the signature ticked, then right.
    patient = aged(46, 582)
    page.get_by_label("Beställarens HSA-id (om det står på blanketten)").fill(CLINICIAN)
    page.get_by_label("Försegling och/eller låsning").check()
    page.get_by_label("Patientens (barnets) personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Vårdens initiativ").check()
    page.get_by_label("1177 journal: försegla, eller bryta försegling").check()
    page.get_by_label("Skäl till beställningen").fill("Hot mot patienten")
    page.get_by_label("Beställande vårdenhet").select_option("DEMO-KALMAR-UNIT")
    page.get_by_role("button", name="Registrera pappersbeställningen").click()
    summary = page.locator(".error-summary")
    summary.wait_for()
    assert "kontrollerad" in summary.inner_text() and page.title().startswith("Fel: ")
    summary.get_by_role("link").first.click()
    assert page.evaluate("document.activeElement.id") == "signature_checked"
    assert page.get_by_label("Patientens (barnets) personnummer eller samordningsnummer").input_value() == patient
    v.check("paper-orders-errors")
    page.get_by_label("Underskrifterna på blanketten är kontrollerade").check()
    page.get_by_role("button", name="Registrera pappersbeställningen").click()
    page.wait_for_url(re.compile(r".*registrerad=RO-\d{4}-\d+"))
    ref = page.url.rsplit("=", 1)[1]
    assert f"Pappersbeställningen {ref} är registrerad" in page.locator(".notice").inner_text()
    order = row(ad, ref)
    assert (order.channel, order.submitted_by, order.paper_registered_by) == ("paper", CLINICIAN, SUPPORT)
    assert page.locator("tr", has_text=ref).get_by_role("cell", name="Nej, ny beställning").count() == 1

    # The order that waited on paper goes back to the digital route from here.
    page.get_by_role("button", name=f"Återuppta digitalt {waiting}").click()
    page.wait_for_url(re.compile(r".*aterupptagen=.*"))
    assert f"Beställningen {waiting} är återupptagen digitalt (väntar på godkännande)" in page.locator(".notice").inner_text()
    assert [(e.actor, e.to_status) for e in audit_actions(ad, waiting) if e.action == "resumed_digital"] == [
        (SUPPORT, "awaiting_approval")]
    assert page.locator(f"tr[id='{waiting}']").count() == 0
    v.check("paper-orders-resumed")


@pytest.mark.browser
def test_the_order_form_prints_what_was_typed_on_the_paper_form(visit: Any, live_app: str,  # noqa: F811
                                                                 ad: Adapters) -> None:
    before = order_count(ad)
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    page = v.page
    v.goto("/bestall/seal_or_lock")
    patient = aged(38, 583)
    page.get_by_label("Patientens personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Vårdens initiativ").check()
    page.get_by_label("Försegla 1177 journal").check()
    page.get_by_label("Skäl till beställningen").fill("Skrivs ut på papper")
    got: dict[str, Any] = {}

    def keep(route: Any) -> None:  # the app's own answer, kept before Chromium's PDF viewer takes the page
        answer = route.fetch()
        got.update(status=answer.status, type=answer.headers["content-type"], body=answer.body(),
                   sent=route.request.post_data or "")
        route.fulfill(response=answer)
    # The PDF opens in a tab of its own (issue 14): the typed form stays where it was.
    v.context.route("**/api/paper-forms/seal_or_lock.pdf?region=kalmar", keep)
    with v.context.expect_page():
        page.get_by_role("button", name="Skriv ut ifylld pappersblankett").click()
    deadline = time.monotonic() + 30
    while "status" not in got and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert page.locator("#order-form").count() == 1
    assert page.get_by_label("Skäl till beställningen").input_value() == "Skrivs ut på papper"
    assert (got["status"], got["type"]) == (200, "application/pdf")
    assert "csrf_token=" in got["sent"]  # the form's own fields, with its CSRF token
    text = pdf_text(got["body"])
    assert patient in text and "Skrivs ut på papper" in text and "☒ Försegla 1177 journal" in text
    assert order_count(ad) == before  # printing stored nothing
