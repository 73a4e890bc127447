"""Starting runs: exactly one run per order, also when the Prefect API is down at submit time;
manual execution waits for the account administrator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from flows import commands
from flows.bootstrap import build
from models.access import Restriction
from tasks.adapters import Adapters
from tasks.adapters.gateway import ConfiguredGateway, access_state
from tasks.adapters.settings import Settings
from tasks.steps import orders
from tasks.steps.runs import reconcile, start_run
from tests.conftest import FlowServer
from tests.e2e import aged, body, decide, status, submit, wait_mails, wait_status

pytestmark = pytest.mark.e2e


async def _runs_named(reference: str) -> int:
    async with get_client() as c:
        runs = await c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[reference])))
    return len(runs)


def test_prefect_down_at_submit_keeps_order_and_starts_run_later(prefect_ad: Adapters, flow_server: FlowServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        started = time.monotonic()
        out = asyncio.run(commands.submit(prefect_ad, body("seal_or_lock"), "DEMO-KALMAR-CLINICIAN"))
        elapsed = time.monotonic() - started
    assert out.kind == "created" and out.order is not None
    ref = out.order.reference
    assert elapsed < 10
    assert f"could not start run for {ref}" in caplog.text
    # The housekeeping loop of the serving process (which reaches the API) starts the run.
    wait_status(prefect_ad, ref, "awaiting_assessment", timeout=60)
    for _ in range(3):
        asyncio.run(reconcile(prefect_ad))
    assert asyncio.run(_runs_named(ref)) == 1


def test_submit_twice_never_makes_two_runs(prefect_ad: Adapters, flow_server: FlowServer) -> None:
    ref = submit(prefect_ad, body("seal_or_lock"))
    with prefect_ad.db.session() as s:
        first = orders.get(s, ref).flow_run_id
        orders.get(s, ref).flow_run_id = None  # as if the first answer was lost on the way back
    assert asyncio.run(start_run(prefect_ad, ref)) == first
    assert asyncio.run(start_run(prefect_ad, ref)) == first
    assert asyncio.run(_runs_named(ref)) == 1


def test_manual_execution_waits_for_account_admin(settings: Settings, prefect_ad: Adapters, flow_server: FlowServer,
                                                  smtp: Path) -> None:
    flow_server.kill()
    manual = FlowServer({**flow_server.env, "RO_GATEWAY": "manual"})
    # This process's adapters as the app's would be with RO_GATEWAY=manual.
    ad = build(settings.model_copy(update={"gateway": "manual"}), db=prefect_ad.db, gateway=ConfiguredGateway("manual"))
    try:
        manual.start()
        ref = submit(ad, body("seal_or_lock", patient_personal_number=aged(33, 913)))
        wait_status(ad, ref, "awaiting_assessment")
        decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        wait_status(ad, ref, "awaiting_approval")
        decide(ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
        wait_status(ad, ref, "executing")
        time.sleep(2)
        assert status(ad, ref) == "executing"  # nobody has done it in the 1177 tool yet
        with pytest.raises(orders.Forbidden):
            decide(ad, ref, "execution", "DEMO-KALMAR-SUPPORT", {"system_reference": "ADM-1"})
        decide(ad, ref, "execution", "DEMO-KALMAR-ACCOUNTADMIN", {"system_reference": "ADM-4711"})
        wait_status(ad, ref, "completed")
        assert len(wait_mails(smtp, ref, 2)) == 2
        with ad.db.session() as s:  # recorded as in force, as the simulated registry would have
            state = access_state(s, orders.get(s, ref).patient_pnr)
        assert state.seal == state.lock == Restriction("care", "kalmar", ref)
    finally:
        manual.stop()
        flow_server.start()


async def _break_suspension(run_id: str) -> None:
    """What a process killed in the middle of suspending leaves: paused, with an input keyset whose schema
    was never saved, so Prefect refuses every resume ("Run input schema not found")."""
    from uuid import UUID

    from prefect.states import Suspended
    keyset = {k: f"harm-assessment-0-{k}-lost" for k in ("description", "response", "schema")}
    async with get_client() as c:
        await c.set_flow_run_state(UUID(run_id), Suspended(timeout_seconds=3600, pause_key="harm-assessment-0",
                                                           state_details={"run_input_keyset": keyset}), force=True)


def test_a_run_that_died_while_suspending_is_replaced(prefect_ad: Adapters, flow_server: FlowServer) -> None:
    ad = prefect_ad
    ref = submit(ad, body("seal_or_lock", patient_personal_number=aged(44, 321)))
    wait_status(ad, ref, "awaiting_assessment")
    flow_server.kill()
    try:
        with ad.db.session() as s:
            first_run = orders.get(s, ref).flow_run_id
        assert first_run
        asyncio.run(_break_suspension(first_run))
        decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        with ad.db.session() as s:
            assert orders.get(s, ref).flow_run_id != first_run  # replaced at once, by the decision itself
    finally:
        flow_server.start()
    wait_status(ad, ref, "awaiting_approval")
    assert asyncio.run(_runs_named(ref)) == 2
