"""Automatic paper fallback end to end: the execution system is down, the order ends up in
`paper_fallback` after the execute task's bounded retries, the orderer is emailed once (no personal data,
no attachment), the pre-filled PDF prints from the app; then the system is back, support resumes the
order digitally and it completes, with every email sent exactly once.

The session's flow server runs with the simulated registry; this test stops it and serves the same
deployments from a flow server of its own with `RO_GATEWAY=down`, so that exactly one process picks up the
runs, and starts the session's server again afterwards (the gateway is back).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
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
from models.tables import AuditEvent, OutboxMessage
from tasks import orders
from tasks.database import session
from tests.conftest import ROOT, FlowServer
from tests.e2e import aged, body, decide, mails, submit, text_of, wait_mails, wait_status

pytestmark = pytest.mark.e2e
PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
ORDERER, HEAD, SUPPORT = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-HEAD", "DEMO-KALMAR-SUPPORT"


def _app() -> FastAPI:
    from forms.app import create_app
    from forms.paper_routes import router
    app = create_app()
    app.include_router(router)
    return app


def _call(app: FastAPI, method: str, url: str, user: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                     headers={"X-Remote-User": user}) as c:
            # A POST without a body still says it is JSON: the app refuses other posts (CSRF).
            return await c.request(method, url, json={} if method == "POST" else None)
    return asyncio.run(go())


async def _runs(run_id: str) -> tuple[Any, list[Any], list[Any]]:
    """The order's run, its task runs and its subflow runs."""
    async with get_client() as c:
        run = await c.read_flow_run(UUID(run_id))
        tasks = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
        children = await c.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(run_id)])))
    return run, tasks, children


def _events(reference: str) -> list[AuditEvent]:
    with session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


def _outbox(reference: str) -> list[str]:
    with session() as s:
        return sorted(s.scalars(select(OutboxMessage.message_id).where(OutboxMessage.order_reference == reference)))


def _flow_run_id(reference: str) -> str:
    with session() as s:
        return str(orders.get(s, reference).flow_run_id)


def test_gateway_down_falls_back_to_paper_then_resumes_digitally(flow_server: FlowServer, smtp: Path) -> None:
    env = os.environ.copy()
    env.update(RO_GATEWAY="down", RO_HOUSEKEEPING_SECONDS="1", PYTHONPATH=str(ROOT))
    down = FlowServer(env)
    app = _app()
    flow_server.kill()
    try:
        down.start()
        ref = submit(body("seal_or_lock", patient_personal_number=aged(61, 725)), actor=ORDERER)
        wait_status(ref, "awaiting_assessment")
        decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR",
               {"harm_found": True, "decision": "restrict", "rationale": "Hot mot patienten"})
        wait_status(ref, "awaiting_approval")
        decide(ref, "approval", HEAD, {"approved": True, "comment": "ok"})
        started = time.monotonic()
        wait_status(ref, "paper_fallback", timeout=120)
        assert time.monotonic() - started > 15  # the retries (1 + 5 + 15 s) came first

        # Bounded retries: one attempt and three retries of the execute task, then the paper-fallback subflow.
        first_run = _flow_run_id(ref)
        deadline = time.monotonic() + 60
        while True:
            run, task_runs, children = asyncio.run(_runs(first_run))
            if run.state.is_final() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert run.state.is_completed(), run.state
        execute = [t for t in task_runs if t.name.startswith("execute-order")]
        assert len(execute) == 1 and execute[0].state.is_failed() and execute[0].run_count == 4
        assert [c.name for c in children] == [f"{ref}-paper"] and children[0].state.is_completed()
        assert children[0].parameters == {"reference": ref}

        # The email: to the orderer only, once, no personal data, no attachment, tells them to print.
        got = wait_mails(smtp, ref, 1)
        assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
        mail = got[0]
        text = text_of(mail)
        assert "pappersblankett" in str(mail["Subject"]) and ref in str(mail["Subject"])
        assert not PNR_SHAPE.search(text), text
        assert "19121212" not in text and "****" not in text and "Hot mot patienten" not in text
        assert "Regionstab Kansli, Strömgatan, Kalmar" in text and f"/api/orders/{ref}/paper.pdf" in text
        assert not list(mail.iter_attachments())
        events = _events(ref)
        assert [(e.from_status, e.to_status) for e in events if e.action == "gateway_unavailable"] == [
            ("executing", "paper_fallback")]
        assert [e.detail["occasion"] for e in events if e.action == "paper_form_checked"] == [1]
        assert [e.detail["occasion"] for e in events if e.action == "paper_fallback_notified"] == [1]

        # The pre-filled paper form prints from the app (only the orders database and WeasyPrint needed).
        pdf = _call(app, "GET", f"/api/orders/{ref}/paper.pdf", ORDERER)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
        assert shutil.which("pdftotext")
        pdf_text = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf.content, capture_output=True,
                                  check=True).stdout.decode()
        assert ref in pdf_text and "Regionstab Kansli" in pdf_text

        # Running the fallback again (by hand, or the sweep) sends nothing new.
        assert asyncio.run(paper_fallback(ref)) == [ref]
        assert ref not in asyncio.run(paper_fallback())
        time.sleep(2)
        assert len(mails(smtp, ref)) == 1 and _outbox(ref) == [f"<{ref}.paper_fallback-1.orderer@restriction-orders.invalid>"]
    finally:
        down.stop()
        if flow_server.proc is None:
            flow_server.start()  # the execution system is back: the simulated registry

    # Support resumes the order digitally; a new run completes it.
    assert _call(app, "POST", f"/api/orders/{ref}/resume-digital", ORDERER).status_code == 403
    r = _call(app, "POST", f"/api/orders/{ref}/resume-digital", SUPPORT)
    assert r.status_code == 200, r.text
    assert r.json() == {"reference": ref, "status": "executing"}
    wait_status(ref, "completed", timeout=90)
    assert _flow_run_id(ref) != first_run
    back = [e for e in _events(ref) if e.action == "resumed_digital"]
    assert [(e.actor, e.from_status, e.to_status) for e in back] == [(SUPPORT, "paper_fallback", "executing")]

    got = wait_mails(smtp, ref, 3)
    time.sleep(3)  # nothing more arrives: no email was doubled
    got = mails(smtp, ref)
    assert len(got) == 3
    subjects = sorted((m["To"], str(m["Subject"])) for m in got)
    assert subjects == [
        ("demo-kalmar-clinician@kalmar.invalid", f"Beställning {ref} är genomförd"),
        ("demo-kalmar-clinician@kalmar.invalid", f"Beställning {ref}: skriv ut pappersblanketten (reservrutin)"),
        ("demo-kalmar-head@kalmar.invalid", f"Beställning {ref} är genomförd"),
    ]
    for m in got:
        assert not PNR_SHAPE.search(text_of(m))
    # Nothing was lost: one order, its decisions kept, executed once.
    with session() as s:
        order = orders.get(s, ref)
        assert [d.stage for d in order.decisions if d.state == "accepted"] == ["harm_assessment", "approval"]
