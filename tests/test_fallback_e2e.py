"""The paper fallback end to end, with the execution system down and then back.

The session's flow server's gateway is down while the file `RO_GATEWAY_DOWN_FLAG` exists (the same
`UnavailableGateway` as `RO_GATEWAY=down`, but it comes back without a restart); this module creates it
and removes it again.

One test, three orders at once (the execute task's retries, 1 + 5 + 15 s, are waited for together):
- A, ordered digitally: falls back to paper after the retries, the orderer is emailed once (no personal
  data, no attachment), the pre-filled PDF prints; while the system stays down the sweep leaves it on
  paper; when the system is back the sweep resumes it digitally by itself and it completes.
- C, ordered digitally: falls back too; its signed paper form arrives and support registers it by its
  reference while the system is still down. It must not fall back a second time (nor tell the orderer to
  print again): it goes to the manual execution step, and the account administrator confirms it.
- B, a signed paper form without a reference, registered while the system is down: the manual step too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from sqlalchemy import select

from flows.fallback import paper_fallback
from models.clock import STOCKHOLM
from models.tables import AuditEvent, OutboxMessage
from tasks.adapters import Adapters
from tasks.steps import orders
from tests.conftest import FlowServer
from tests.e2e import aged, body, decide, mails, submit, text_of, wait_mails, wait_status

pytestmark = pytest.mark.e2e
PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
ORDERER, HEAD, SUPPORT = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-HEAD", "DEMO-KALMAR-SUPPORT"
ASSESSOR, ACCOUNT_ADMIN = "DEMO-KALMAR-ASSESSOR", "DEMO-KALMAR-ACCOUNTADMIN"
ORDERER_MAIL, HEAD_MAIL = "demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"


@pytest.fixture()
def gateway_down(flow_server: FlowServer, smtp: Path) -> Iterator[Path]:
    """The execution system is down until the test removes the yielded file (or the test ends)."""
    flag = Path(os.environ["RO_GATEWAY_DOWN_FLAG"])
    flag.touch()
    try:
        yield flag
    finally:
        flag.unlink(missing_ok=True)


def _call(app: FastAPI, method: str, url: str, user: str, json: Any = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                     headers={"X-Remote-User": user}) as c:
            # A POST without a body still says it is JSON: the app refuses other posts (CSRF).
            body = {} if json is None and method == "POST" else json
            return await c.request(method, url, json=body)
    return asyncio.run(go())


async def _runs(run_id: str) -> tuple[Any, list[Any], list[Any]]:
    """The order's run, its task runs and its subflow runs (it has none: the paper routine is a task of
    the order's run; the `paper-fallback` deployment is for a person or a schedule)."""
    async with get_client() as c:
        run = await c.read_flow_run(UUID(run_id))
        tasks = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
        children = await c.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(run_id)])))
    return run, tasks, children


def _events(ad: Adapters, reference: str) -> list[AuditEvent]:
    with ad.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def _actions(ad: Adapters, reference: str, action: str) -> list[AuditEvent]:
    return [e for e in _events(ad, reference) if e.action == action]


def _wait_event(ad: Adapters, reference: str, action: str, timeout: float = 120) -> AuditEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := _actions(ad, reference, action):
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"{reference}: no {action} event")


def _outbox(ad: Adapters, reference: str) -> list[str]:
    with ad.db.session() as s:
        return sorted(s.scalars(select(OutboxMessage.message_id).where(OutboxMessage.order_reference == reference)))


def _flow_run_id(ad: Adapters, reference: str) -> str:
    with ad.db.session() as s:
        return str(orders.get(s, reference).flow_run_id)


def _assessed_and_approved(ad: Adapters, *refs: str) -> None:
    for ref in refs:
        wait_status(ad, ref, "awaiting_assessment")
        decide(ad, ref, "harm_assessment", ASSESSOR, {"harm_found": True, "decision": "restrict",
                                                      "rationale": "Hot mot patienten"})
    for ref in refs:
        wait_status(ad, ref, "awaiting_approval")
        decide(ad, ref, "approval", HEAD, {"approved": True, "comment": "ok"})


def _no_personal_data(m: Any) -> None:
    text = text_of(m)
    assert not PNR_SHAPE.search(text), text
    assert "19121212" not in text and "Hot mot patienten" not in text


# Three orders through every step with the retries in between: about three and a half minutes on a loaded
# two-core machine, more than the suite's default timeout allows for one test.
@pytest.mark.timeout(480)
def test_gateway_down_paper_fallback_manual_execution_and_digital_resume(prefect_ad: Adapters, gateway_down: Path,
                                                                         smtp: Path) -> None:
    from forms.app import create_app
    ad = prefect_ad
    app = create_app(ad)
    today = datetime.now(STOCKHOLM).date().isoformat()  # Stockholm's day, as the registration checks it

    a = submit(ad, body("seal_or_lock", patient_personal_number=aged(61, 725)), actor=ORDERER)
    c = submit(ad, body("seal_or_lock", patient_personal_number=aged(58, 731)), actor=ORDERER)
    # B: a blank paper form filled in by hand, on the patient's own initiative (approval only).
    r = _call(app, "POST", "/api/paper-orders", SUPPORT, {
        **body("seal_or_lock", initiative="patient", actions=["seal_journal"],
               patient_personal_number=aged(44, 743)),
        "received_on": today, "signature_checked": True, "orderer_hsa_id": ORDERER})
    assert r.status_code == 201, r.text
    b = r.json()["reference"]
    assert r.json()["channel"] == "paper"
    _assessed_and_approved(ad, a, c)
    wait_status(ad, b, "awaiting_approval")
    decide(ad, b, "approval", HEAD, {"approved": True})
    started = time.monotonic()
    wait_status(ad, a, "paper_fallback", timeout=120)
    wait_status(ad, c, "paper_fallback", timeout=60)
    assert time.monotonic() - started > 6  # the retries (1 + 2 + 4 s in the suite) came first

    # C: its orderer was told to print too; the signed form arrives while the system is still down, and
    # support registers it by its reference (its retries run while A is looked at).
    assert [m["To"] for m in wait_mails(smtp, c, 1)] == [ORDERER_MAIL]
    r = _call(app, "POST", "/api/paper-orders", SUPPORT, {"reference": c, "received_on": today,
                                                         "signature_checked": True, "order_type": "seal_or_lock"})
    assert r.status_code == 201, r.text
    assert r.json() == {"reference": c, "status": "executing", "channel": "paper", "continued": True, "warnings": []}

    # A: bounded retries (one attempt, three retries), then the paper routine as tasks of the order's run
    # (the fallback, then the paper form checked and the orderer told); one email.
    first_run = _flow_run_id(ad, a)
    deadline = time.monotonic() + 60
    while True:
        run, task_runs, children = asyncio.run(_runs(first_run))
        if run.state.is_final() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run.state.is_completed(), run.state
    execute = [t for t in task_runs if t.name.startswith("execute-order")]
    assert len(execute) == 1 and execute[0].state.is_failed() and execute[0].run_count == 4
    paper = {t.name.rsplit("-", 1)[0]: t for t in task_runs if t.name.startswith(("fall-back-to-paper", "paper-fallback"))}
    assert set(paper) == {"fall-back-to-paper", "paper-fallback"}, [t.name for t in task_runs]
    assert all(t.state.is_completed() and t.run_count == 1 for t in paper.values())
    assert paper["fall-back-to-paper"].start_time < paper["paper-fallback"].start_time
    assert children == []
    got = wait_mails(smtp, a, 1)
    assert [m["To"] for m in got] == [ORDERER_MAIL]
    mail = got[0]
    assert "pappersblankett" in str(mail["Subject"]) and a in str(mail["Subject"])
    _no_personal_data(mail)
    assert "****" not in text_of(mail)
    assert "Regionstab Kansli, Strömgatan, Kalmar" in text_of(mail) and f"/api/orders/{a}/paper.pdf" in text_of(mail)
    assert not list(mail.iter_attachments())
    assert [(e.from_status, e.to_status) for e in _actions(ad, a, "gateway_unavailable")] == [("executing", "paper_fallback")]
    assert [e.detail["occasion"] for e in _actions(ad, a, "paper_form_checked")] == [1]
    assert [e.detail["occasion"] for e in _actions(ad, a, "paper_fallback_notified")] == [1]

    # The pre-filled paper form prints from the app (only the orders database and WeasyPrint needed).
    pdf = _call(app, "GET", f"/api/orders/{a}/paper.pdf", ORDERER)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    assert shutil.which("pdftotext")
    pdf_text = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf.content, capture_output=True,
                              check=True).stdout.decode()
    assert a in pdf_text and "Regionstab Kansli" in pdf_text
    # Running the fallback again (by hand, or the sweep) sends nothing new.
    assert asyncio.run(paper_fallback(a)) == [a]
    assert a not in asyncio.run(paper_fallback())
    assert _call(app, "POST", f"/api/orders/{a}/resume-digital", ORDERER).status_code == 403

    # B and C: the gateway still fails, and both go to the manual execution step, not to paper.
    for ref in (b, c):
        manual = _wait_event(ad, ref, "execution_manual", timeout=120)
        assert manual.actor == "system" and manual.detail == {"why": "gateway_unavailable", "paper_received": True}
    for ref in (b, c):
        deadline = time.monotonic() + 30
        while not asyncio.run(_runs(_flow_run_id(ad, ref)))[0].state.is_paused():  # waits for the account admin
            assert time.monotonic() < deadline, f"{ref} does not wait for the manual step"
            time.sleep(0.3)
        assert orders_status(ad, ref) == "executing"
    assert len(_actions(ad, c, "gateway_unavailable")) == 1 and not _actions(ad, b, "gateway_unavailable")
    assert [e.detail["occasion"] for e in _actions(ad, c, "paper_fallback_notified")] == [1]
    assert len(mails(smtp, c)) == 1 and not mails(smtp, b)  # nobody is told to print a form already here

    # A: the sweep leaves it on paper while the system is down (it probed all along, backing off) ...
    assert orders_status(ad, a) == "paper_fallback" and not _actions(ad, a, "resumed_digital")
    # ... and resumes it digitally by itself once the system is back.
    gateway_down.unlink()
    # B and C stay with the account administrator even now (the gateway must not apply them as well while
    # a person may be doing it by hand); the confirmation from the 1177 tool completes them.
    for ref in (b, c):
        r = _call(app, "POST", f"/api/orders/{ref}/execution", ACCOUNT_ADMIN, {"system_reference": f"ADM-{ref}"})
        assert r.status_code == 202, r.text
    for ref in (a, b, c):
        wait_status(ad, ref, "completed", timeout=60)
    for ref in (b, c):
        done = _actions(ad, ref, "executed")
        assert [(e.actor, e.detail) for e in done] == [(ACCOUNT_ADMIN, {"system_reference": f"ADM-{ref}"})]
    back = _actions(ad, a, "resumed_digital")
    assert [(e.actor, e.from_status, e.to_status, e.detail) for e in back] == [
        ("system", "paper_fallback", "executing", {"occasion": 1, "why": "gateway_available"})]
    assert _flow_run_id(ad, a) != first_run
    assert [(e.actor, e.detail) for e in _actions(ad, a, "executed")] == [("system", {"system_reference": f"SIM-{a}"})]

    wait_mails(smtp, a, 3)
    wait_mails(smtp, b, 2)
    wait_mails(smtp, c, 3)
    time.sleep(3)  # nothing more arrives: no email was doubled
    subjects = {ref: sorted((m["To"], str(m["Subject"])) for m in mails(smtp, ref)) for ref in (a, b, c)}
    paper = "skriv ut pappersblanketten (reservrutin)"
    for ref in (a, c):
        assert subjects[ref] == [(ORDERER_MAIL, f"Beställning {ref} är genomförd"),
                                 (ORDERER_MAIL, f"Beställning {ref}: {paper}"),
                                 (HEAD_MAIL, f"Beställning {ref} är genomförd")]
    assert subjects[b] == [(ORDERER_MAIL, f"Beställning {b} är genomförd"), (HEAD_MAIL, f"Beställning {b} är genomförd")]
    for ref in (a, b, c):
        for m in mails(smtp, ref):
            _no_personal_data(m)
    assert _outbox(ad, a)[-1] == f"<{a}.paper_fallback-1.orderer@restriction-orders.invalid>"
    # Nothing was lost: one order each, decisions kept, executed once.
    with ad.db.session() as s:
        accepted = {ref: [d.stage for d in orders.get(s, ref).decisions if d.state == "accepted"] for ref in (a, b, c)}
        assert accepted == {a: ["harm_assessment", "approval"], b: ["approval", "execution"],
                            c: ["harm_assessment", "approval", "execution"]}
        assert orders.get(s, c).channel == "paper" and orders.get(s, a).channel == "digital"


def orders_status(ad: Adapters, reference: str) -> str:
    with ad.db.session() as s:
        return orders.get(s, reference).status
