"""The urgent path end to end: a real Prefect server, served flows (the order flows and `urgent-order`), a real
SMTP server on loopback. Östergötland's urgent line is open around the clock, so the page goes to on-call
whatever time the tests run."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from sqlalchemy import select

from flows import urgent
from models.tables import Deadline, Deviation
from tasks.adapters import Adapters
from tasks.adapters.automations import (
    MISSED_CALLBACK,
    RUN_FAILED,
    STALLED_DECISION,
    ZOMBIE,
    ensure_automations,
)
from tasks.steps import escalation, orders, urgency
from tests.conftest import FlowServer
from tests.e2e import body, mails, status, submit, text_of, wait_mails, wait_status

pytestmark = pytest.mark.e2e
PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
REGION = "ostergotland"
CLINICIAN = "DEMO-OSTERGOTLAND-CLINICIAN"
ONCALL = "DEMO-OSTERGOTLAND-ONCALL"
ON_CALL_ADDRESS = "beredskap@ostergotland.invalid"
DEPLOYMENT = "urgent-order/urgent-order"


@pytest.fixture(scope="module")
def urgent_server(flow_server: FlowServer) -> None:
    """The served flows include the `urgent-order` deployment (flows/serve.py): wait until it is registered."""

    async def served() -> bool:
        async with get_client() as c:
            try:
                await c.read_deployment_by_name(DEPLOYMENT)
                return True
            except Exception:
                return False
    deadline = time.monotonic() + 90
    while not asyncio.run(served()):
        assert time.monotonic() < deadline, "urgent-order is not served"
        time.sleep(0.5)


def _assert_clean(messages: list[Any]) -> None:
    for m in messages:
        text = text_of(m)
        assert not PNR_SHAPE.search(text), text
        assert "Hot mot patienten" not in text


async def _run_tags(ad: Adapters, reference: str) -> list[str]:
    with ad.db.session() as s:
        run_id = orders.get(s, reference).flow_run_id
    assert run_id
    async with get_client() as c:
        return list((await c.read_flow_run(UUID(run_id))).tags)


def test_submit_urgent_pages_on_call_before_the_run_and_the_callback_lets_it_continue(
        prefect_ad: Adapters, flow_server: FlowServer, smtp: Path) -> None:
    ad = prefect_ad
    started = time.monotonic()
    ref = submit(ad, body("seal_or_lock", region=REGION, urgent=True), actor=CLINICIAN)
    # The page is at the SMTP server when submit returns: no worker poll, no Prefect run involved. (A
    # housekeeping round may have taken the send over a moment before; then it is a moment behind.)
    returned = time.monotonic() - started
    got = wait_mails(smtp, ref, 1, timeout=2)
    assert [m["To"] for m in got] == [ON_CALL_ADDRESS], f"{returned:.2f} s"
    text = text_of(got[0])
    assert ref in text and "BRÅDSKANDE" in str(got[0]["Subject"]) and "Demoenheten" in text
    _assert_clean(got)

    wait_status(ad, ref, "awaiting_callback")
    assert "urgent" in asyncio.run(_run_tags(ad, ref))
    out = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "Uppringd, ärendet klart att gå vidare"))
    assert out.on_time and out.via == "run"
    wait_status(ad, ref, "awaiting_assessment")
    with ad.db.session() as s:
        [dl] = s.scalars(select(Deadline).where(Deadline.order_reference == ref, Deadline.kind == "callback"))
        assert dl.met_at is not None and dl.fired_at is None
        assert orders.get(s, ref).stage_plan["callback"]["rule"] == "urgent_callback"
    assert urgency.callback_clock(ad, ref, datetime.now(UTC)).state == "met"
    assert escalation.escalate_due(ad, datetime.now(UTC) + timedelta(hours=1), references=[ref]) == []


def test_urgent_deployment_makes_a_non_urgent_order_urgent(prefect_ad: Adapters, flow_server: FlowServer,
                                                            urgent_server: None, smtp: Path) -> None:
    ad = prefect_ad
    ref = submit(ad, body("seal_or_lock", region=REGION), actor=CLINICIAN)
    wait_status(ad, ref, "awaiting_assessment")
    assert mails(smtp, ref) == []
    before = datetime.now(UTC)
    fr = asyncio.run(arun_deployment(DEPLOYMENT, parameters={"reference": ref}, timeout=120, poll_interval=1))
    assert fr.state is not None and fr.state.is_completed(), fr.state
    assert fr.name == f"urgent-{ref}"
    with ad.db.session() as s:
        order = orders.get(s, ref)
        assert order.urgent and order.callback_due_at is not None
        assert before + timedelta(minutes=29) < order.callback_due_at < datetime.now(UTC) + timedelta(minutes=31)
        assert order.status == "awaiting_assessment"
    # The page, and (issue 13) the assessor, told by the dispatcher that the now urgent order waits for them.
    got = wait_mails(smtp, ref, 2, timeout=30)
    assert sorted(str(m["To"]) for m in got) == sorted([ON_CALL_ADDRESS, "demo-ostergotland-assessor@ostergotland.invalid"])
    _assert_clean(got)
    assert "urgent" in asyncio.run(_run_tags(ad, ref))

    # Started again from the dashboard: nothing changes, nobody is paged twice.
    again = asyncio.run(arun_deployment(DEPLOYMENT, parameters={"reference": ref}, timeout=120, poll_interval=1))
    assert again.state is not None and again.state.is_completed()
    time.sleep(1)
    assert len(mails(smtp, ref)) == 2  # the same two
    with ad.db.session() as s:
        assert len(list(s.scalars(select(Deadline).where(Deadline.order_reference == ref,
                                                         Deadline.kind == "callback")))) == 1
    # On-call calls back: the clock stops, the order goes on where it was.
    assert asyncio.run(urgent.record_callback(ad, ref, ONCALL, "Uppringd")).via == "stored"
    assert urgency.callback_clock(ad, ref, datetime.now(UTC)).state == "met"
    assert status(ad, ref) == "awaiting_assessment"


def test_urgent_deployment_refuses_what_is_not_a_reference(flow_server: FlowServer, urgent_server: None) -> None:
    fr = asyncio.run(arun_deployment(DEPLOYMENT, parameters={"reference": "not-a-reference"}, timeout=120,
                                     poll_interval=1))
    assert fr.state is not None and fr.state.is_failed()
    assert fr.name == "urgent-invalid-reference"
    assert "not-a-reference" not in (fr.state.message or "")


async def _events(name: str, resource_id: str | None = None, prefix: str | None = None,
                  since: datetime | None = None) -> list[Any]:
    f = EventFilter(occurred=EventOccurredFilter(since=since or datetime.now(UTC) - timedelta(hours=1),
                                                 until=datetime.now(UTC) + timedelta(hours=1)),
                    event=EventNameFilter(name=[name]) if not prefix else EventNameFilter(prefix=[prefix]),
                    resource=EventResourceFilter(id=[resource_id]) if resource_id else None)
    async with get_client() as c:
        page = await c.read_events(filter=f, limit=50)
    return list(page.events)


def _wait_events(name: str, resource_id: str | None = None, prefix: str | None = None,
                 since: datetime | None = None, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = asyncio.run(_events(name, resource_id, prefix, since))
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {name or prefix} event for {resource_id}")


def test_missed_callback_escalates_emits_an_event_and_fires_the_automation(prefect_ad: Adapters,
                                                                           smtp: Path) -> None:
    ad = prefect_ad
    ids = ensure_automations()
    assert set(ids) == {MISSED_CALLBACK, RUN_FAILED, ZOMBIE, STALLED_DECISION}
    assert ensure_automations() == ids  # idempotent by name
    since = datetime.now(UTC) - timedelta(seconds=5)
    out = orders.submit(ad, body("seal_or_lock", urgent=True), "DEMO-KALMAR-CLINICIAN",
                        datetime.now(UTC) - timedelta(minutes=31))
    assert out.order is not None
    ref = out.order.reference
    # Prefect's own event sender. (The served flows' housekeeping may run the dispatcher too: whoever comes
    # first fires it, exactly once.)
    assert escalation.escalate_due(ad, datetime.now(UTC), references=[ref]) in ([ref], [])
    assert escalation.escalate_due(ad, datetime.now(UTC), references=[ref]) == []
    with ad.db.session() as s:
        assert len(list(s.scalars(select(Deviation).where(Deviation.order_reference == ref)))) == 1
    [ev] = _wait_events(escalation.EVENT, f"order.{ref}")
    assert ev.payload["minutes_late"] in (1, 2)
    assert not PNR_SHAPE.search(json.dumps(ev.model_dump(mode="json")))
    [m] = [m for m in wait_mails(smtp, ref, 1) if "ESKALERING" in str(m["Subject"])]
    assert m["To"] == "eskalering@kalmar.invalid"
    # The shipped automation reacts to it: the dashboard shows it triggered.
    triggered = _wait_events("", f"prefect.automation.{ids[MISSED_CALLBACK]}", prefix="prefect.automation.",
                             since=since)
    assert any(e.event.startswith("prefect.automation.") for e in triggered)
