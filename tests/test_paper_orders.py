"""Registering received, signed paper orders (reservrutin): `POST /api/paper-orders` and
`POST /api/orders/{reference}/resume-digital`, against the real app (in-process, with `forms.paper_routes`
included as the lead will include it), the orders database and, where a run must start, the served flows.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from prefect.client.orchestration import get_client
from sqlalchemy import func, select

from models.clock import STOCKHOLM
from models.tables import AuditEvent, Order
from tasks import orders
from tasks.database import session
from tests.conftest import FlowServer
from tests.e2e import aged, body, decide, submit, wait_mails, wait_status

CLINICIAN, SUPPORT, HEAD = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-SUPPORT", "DEMO-KALMAR-HEAD"
OTHER_SUPPORT = "DEMO-OSTERGOTLAND-SUPPORT"


@pytest.fixture(scope="module")
def app(db: None) -> FastAPI:
    from forms.app import create_app
    from forms.paper_routes import router
    a = create_app()
    a.include_router(router)
    return a


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


def order_count() -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).select_from(Order)) or 0)


def row(reference: str) -> Order:
    with session() as s:
        return orders.get(s, reference)


def audit_actions(reference: str) -> list[AuditEvent]:
    with session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == reference)
                              .order_by(AuditEvent.id)))


async def _run_of(run_id: str) -> Any:
    async with get_client() as c:
        return await c.read_flow_run(UUID(run_id))


@pytest.mark.e2e
def test_new_paper_order_gets_channel_paper_and_its_run_starts(app: FastAPI, flow_server: FlowServer) -> None:
    r = call(app, "POST", "/api/paper-orders", SUPPORT,
             paper(body("seal_or_lock", patient_personal_number=aged(47, 318)), orderer_hsa_id=CLINICIAN))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["channel"] == "paper" and out["continued"] is False and out["status"] == "submitted"
    ref = out["reference"]
    order = row(ref)
    assert order.channel == "paper" and order.submitted_by == CLINICIAN and order.paper_registered_by == SUPPORT
    assert order.paper_received_on is not None
    assert order.paper_received_on.astimezone(STOCKHOLM).date().isoformat() == today()
    registered = [e for e in audit_actions(ref) if e.action == "paper_registered"]
    assert len(registered) == 1 and registered[0].actor == SUPPORT
    assert registered[0].detail["signature_checked"] is True
    # Its run starts and the normal routine takes it from the beginning.
    wait_status(ref, "awaiting_assessment")
    run = asyncio.run(_run_of(str(row(ref).flow_run_id)))
    assert "channel:paper" in run.tags and run.parameters == {"reference": ref}


def test_signature_not_checked_is_refused_with_every_error(app: FastAPI) -> None:
    before = order_count()
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
    assert order_count() == before


@pytest.mark.e2e
def test_paper_fallback_order_registered_by_reference_continues(app: FastAPI, flow_server: FlowServer,
                                                                 smtp: Path) -> None:
    patient = aged(52, 436)
    ref = submit(body("seal_or_lock", patient_personal_number=patient))
    wait_status(ref, "awaiting_assessment")
    old_run = str(row(ref).flow_run_id)
    deadline = time.monotonic() + 30
    while not asyncio.run(_run_of(old_run)).state.is_paused():  # suspended, waiting for the assessor
        assert time.monotonic() < deadline, "the run did not suspend"
        time.sleep(0.3)
    # The order went to the paper routine while it waited for the harm assessment.
    with session() as s:
        orders.transition(s, orders.get(s, ref), "paper_fallback", actor="system", action="gateway_unavailable")
    count = order_count()

    wrong = call(app, "POST", "/api/paper-orders", SUPPORT,
                 paper({"patient_personal_number": aged(52, 437), "order_type": "seal_or_lock"}, reference=ref))
    assert wrong.status_code == 422 and codes(wrong) == {"patient_personal_number": "does_not_match_order"}
    assert row(ref).status == "paper_fallback"

    r = call(app, "POST", "/api/paper-orders", SUPPORT,
             paper({"patient_personal_number": patient, "order_type": "seal_or_lock"}, reference=ref.lower()))
    assert r.status_code == 201, r.text
    assert r.json()["reference"] == ref and r.json()["continued"] is True
    assert r.json()["status"] == "awaiting_assessment"  # the stage it was at, not the start
    assert order_count() == count
    order = row(ref)
    assert order.paper_registered_by == SUPPORT and order.paper_received_on is not None
    assert order.channel == "digital"  # it was ordered digitally; the paper fields record the signed copy
    assert order.flow_run_id and order.flow_run_id != old_run
    # The run that waited at the assessment was cancelled, so only the new one continues.
    assert asyncio.run(_run_of(old_run)).state.is_cancelled()
    back = [e for e in audit_actions(ref) if e.action == "paper_registered"]
    assert [(e.from_status, e.to_status, e.actor) for e in back] == [("paper_fallback", "awaiting_assessment", SUPPORT)]

    again = call(app, "POST", "/api/paper-orders", SUPPORT, paper({}, reference=ref))
    assert again.status_code == 409 and codes(again) == {"": "wrong_status"}

    decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ref, "awaiting_approval")
    decide(ref, "approval", HEAD, {"approved": True})
    wait_status(ref, "completed")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    # A completed order is no longer in the paper routine.
    done = call(app, "POST", f"/api/orders/{ref}/resume-digital", SUPPORT, json={})
    assert done.status_code == 409 and codes(done) == {"": "wrong_status"}
    other = call(app, "POST", f"/api/orders/{ref}/resume-digital", OTHER_SUPPORT, json={})
    assert other.status_code == 403 and codes(other) == {"": "other_region"}


def test_identity_and_roles(app: FastAPI) -> None:
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

    before = order_count()
    assert call(app, "POST", "/api/orders/RO-2026-000001/resume-digital", CLINICIAN, json={}).status_code == 403
    assert call(app, "POST", "/api/orders/RO-2020-999999/resume-digital", SUPPORT, json={}).status_code == 404
    assert call(app, "POST", "/api/orders/not-a-ref/resume-digital", SUPPORT, json={}).status_code == 404
    assert order_count() == before
