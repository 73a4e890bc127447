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
from tasks.settings import settings
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
    assert order.channel == "paper"  # the signed paper form is now the order's record
    assert order.flow_run_id and order.flow_run_id != old_run
    # The run that waited at the assessment was cancelled, so only the new one continues.
    assert asyncio.run(_run_of(old_run)).state.is_cancelled()
    back = [e for e in audit_actions(ref) if e.action == "paper_registered"]
    assert [(e.from_status, e.to_status, e.actor) for e in back] == [("paper_fallback", "awaiting_assessment", SUPPORT)]
    assert back[0].channel == "app" and back[0].detail == {
        "received_on": today(), "signature_checked": True, "continued": True, "previous_channel": "digital"}
    assert "channel:paper" in asyncio.run(_run_of(str(order.flow_run_id))).tags

    again = call(app, "POST", "/api/paper-orders", SUPPORT, paper({}, reference=ref))
    assert again.status_code == 409 and codes(again) == {"": "wrong_status"}

    decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ref, "awaiting_approval")
    decide(ref, "approval", HEAD, {"approved": True})
    wait_status(ref, "completed")
    got = wait_mails(smtp, ref, 2)
    assert sorted(m["To"] for m in got) == ["demo-kalmar-clinician@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"]
    # A completed order is no longer in the paper routine.
    done = call(app, "POST", f"/api/orders/{ref}/resume-digital", SUPPORT)
    assert done.status_code == 409 and codes(done) == {"": "wrong_status"}
    other = call(app, "POST", f"/api/orders/{ref}/resume-digital", OTHER_SUPPORT)
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
    assert call(app, "POST", "/api/orders/RO-2026-000001/resume-digital", CLINICIAN).status_code == 403
    assert call(app, "POST", "/api/orders/RO-2020-999999/resume-digital", SUPPORT).status_code == 404
    assert call(app, "POST", "/api/orders/not-a-ref/resume-digital", SUPPORT).status_code == 404
    assert order_count() == before


# --- the gateway's probe and the sweep that resumes orders on paper ------------------------------------

def test_gateway_probe_and_the_down_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.gateway import GatewayUnavailable, UnavailableGateway, gateway
    assert gateway("simulated").available() and gateway("manual").available()
    assert not gateway("down").available()
    flag = tmp_path / "gateway-down"
    monkeypatch.setenv("RO_GATEWAY_DOWN_FLAG", str(flag))
    settings.cache_clear()
    try:
        assert gateway().available()  # no file: the configured gateway
        flag.touch()
        down = gateway()
        assert isinstance(down, UnavailableGateway) and not down.available()
        with pytest.raises(GatewayUnavailable), session() as s:
            down.apply(s, Order())
        flag.unlink()
        assert gateway().available()
    finally:
        monkeypatch.undo()
        settings.cache_clear()


def _on_paper(at: datetime, at_stage: str = "executing", **paper_fields: Any) -> str:
    """An order stored without a run whose execution (or another stage) fell back to paper at `at`."""
    out = orders.submit(body("seal_or_lock", patient_personal_number=aged(50, 571)), CLINICIAN, at)
    assert out.order is not None
    with session() as s:
        order = orders.get(s, out.order.reference)
        order.stage_plan = {st: {"required": False} for st in ("callback", "harm_assessment", "approval")}
        for name, value in paper_fields.items():
            setattr(order, name, value)
        for stage in ("awaiting_approval", "executing")[:2 if at_stage == "executing" else 1]:
            orders.transition(s, order, stage, actor="system", action="test", at=at)
        orders.transition(s, order, "paper_fallback", actor="system", action="gateway_unavailable", at=at)
        return order.reference


def test_the_sweep_resumes_orders_on_paper_when_the_system_answers_backing_off_while_it_does_not(
        db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run is started when Prefect answers; the reconciler starts it otherwise.
    from forms.api import prefect_fails_fast
    from tasks import paper_orders
    flag = tmp_path / "gateway-down"
    flag.touch()
    monkeypatch.setenv("RO_GATEWAY_DOWN_FLAG", str(flag))
    monkeypatch.setenv("RO_PAPER_RESUME_SECONDS", "30")
    settings.cache_clear()
    paper_orders._probe = paper_orders._Probe()
    t = datetime.now(STOCKHOLM)
    ref = _on_paper(t)
    signed = _on_paper(t, channel="paper", paper_received_on=t)  # its signed form is here: never resumed
    earlier = _on_paper(t, at_stage="awaiting_approval")  # not at execution: the probe cannot vouch for it

    def sweep(after_s: float) -> list[str]:
        with prefect_fails_fast():
            return [r for r in asyncio.run(paper_orders.resume_when_back(t + timedelta(seconds=after_s)))
                    if r in (ref, signed, earlier)]
    try:
        assert sweep(10) == []                       # too soon after the fallback: nothing is probed
        assert paper_orders._probe.after is None
        delays = []
        for at in (31, 61, 121, 241, 481, 781, 1081):  # down: each probe fails and the next waits longer
            assert sweep(at) == []
            delays.append(paper_orders._probe.delay)
        assert delays == [30, 60, 120, 240, 300, 300, 300]  # doubling, at most ten times the first wait
        flag.unlink()
        assert sweep(1100) == []                     # back, but the next probe is not due yet
        assert row(ref).status == "paper_fallback"
        assert sweep(1381) == [ref]
        assert row(ref).status == "executing"
        assert row(signed).status == row(earlier).status == "paper_fallback"
        back = [e for e in audit_actions(ref) if e.action == "resumed_digital"]
        assert [(e.actor, e.from_status, e.to_status, e.detail) for e in back] == [
            ("system", "paper_fallback", "executing", {"occasion": 1, "why": "gateway_available"})]
        assert paper_orders._probe.after is None and sweep(1382) == []
    finally:
        monkeypatch.undo()
        settings.cache_clear()
        paper_orders._probe = paper_orders._Probe()
        with session() as s:  # left on paper by the test: out of the way of the served flows' own sweep
            for r in (ref, signed, earlier):
                if (o := orders.get(s, r)).status == "paper_fallback":
                    orders.transition(s, o, "cancelled", actor="system", action="cancelled")


def test_the_repair_tells_an_orderer_whose_run_died_before_the_email(db: None, smtp: Path) -> None:
    from flows.fallback import REPAIR_AFTER_S, _tell_untold
    now = datetime.now(STOCKHOLM)
    old = _on_paper(now - timedelta(seconds=REPAIR_AFTER_S + 5))
    fresh = _on_paper(now)  # its own run is about to tell the orderer: left to it
    try:
        told = _tell_untold(now)
        assert old in told and fresh not in told
        assert [e.detail["occasion"] for e in audit_actions(old) if e.action == "paper_fallback_notified"] == [1]
        assert [e.detail["occasion"] for e in audit_actions(old) if e.action == "paper_form_checked"] == [1]
        assert old not in _tell_untold(now) and old not in _tell_untold(now + timedelta(minutes=5))
        got = wait_mails(smtp, old, 1)
        assert [m["To"] for m in got] == ["demo-kalmar-clinician@kalmar.invalid"]
    finally:
        with session() as s:
            for r in (old, fresh):
                orders.transition(s, orders.get(s, r), "cancelled", actor="system", action="cancelled")


