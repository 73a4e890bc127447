"""Operations against the session's real Prefect server: the automations CLI, the per-order artifact,
`prefect deploy --all` from prefect.yaml."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from flows import commands
from forms import cli
from tasks.adapters import Adapters
from tasks.adapters.automations import MISSED_CALLBACK, RUN_FAILED, STALLED_DECISION, ZOMBIE
from tasks.adapters.automations_monitoring import AUDIT_CHAIN_BROKEN, MONITORING_FAILED, OVERDUE_ORDERS
from tests.conftest import FlowServer, prefect_headers
from tests.e2e import body, decide, submit, wait_status

pytestmark = pytest.mark.e2e
SHIPPED = {MISSED_CALLBACK, RUN_FAILED, ZOMBIE, STALLED_DECISION, OVERDUE_ORDERS, MONITORING_FAILED, AUDIT_CHAIN_BROKEN}


def _listed(api: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in httpx.post(f"{api}/automations/filter", json={}, timeout=10, headers=prefect_headers()).json():
        out.setdefault(a["name"], []).append(a["id"])
    return out


def test_cli_creates_every_shipped_automation_once(prefect_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["automations"]) == 0
    first = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(first) == SHIPPED
    assert cli.main(["automations"]) == 0  # idempotent: the same ones, no duplicates
    assert dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()) == first
    listed = _listed(prefect_server)
    assert {name: listed[name] for name in SHIPPED} == {name: [first[name]] for name in SHIPPED}
    assert cli.main(["automations", "--print"]) == 0
    printed = json.loads(capsys.readouterr().out)["automations"]
    assert {a["name"] for a in printed} == SHIPPED


# --- the order's card (markdown artifact) -----------------------------------------------------------------

PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")


async def _card(reference: str) -> tuple[str, int]:
    """The latest version of the order's card, and how many versions it has."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    key = f"order-{reference.lower()}"
    async with get_client() as c:
        versions = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                          sort=ArtifactSort.UPDATED_DESC)
    return (str(versions[0].data) if versions else ""), len(versions)


def _wait_card(reference: str, status: str, timeout: float = 60) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    text, n = "", 0
    while time.monotonic() < deadline:
        text, n = asyncio.run(_card(reference))
        if f"(`{status}`)" in text:
            return text, n
        time.sleep(0.3)
    raise AssertionError(f"card of {reference} never showed {status}: {text[:300]}")


def _no_personal_data(text: str) -> None:
    assert not PNR_SHAPE.search(text), text
    assert "1912" not in text
    for free_text in ("Hot mot patienten", "Risk för hot", "Fel patient"):  # reason, comment, cancel reason
        assert free_text not in text


def test_each_order_has_its_card_waiting_completed_and_cancelled(prefect_ad: Adapters, flow_server: FlowServer) -> None:
    ad = prefect_ad
    # A patient's own request: one human step (approval), so the test costs one resumed run, not two.
    ref = submit(ad, body("seal_or_lock", initiative="patient", actions=["seal_journal"], region="ostergotland"),
                 actor="DEMO-OSTERGOTLAND-CLINICIAN")
    wait_status(ad, ref, "awaiting_approval")
    waiting, _ = _wait_card(ref, "awaiting_approval")
    assert "| harm_assessment | nej | patient_own_request |" in waiting
    assert "| approval | ja | head_of_department_approves |" in waiting
    assert "| received |" in waiting
    _no_personal_data(waiting)
    decide(ad, ref, "approval", "DEMO-OSTERGOTLAND-HEAD", {"approved": True, "comment": "Risk för hot"})
    wait_status(ad, ref, "completed")
    done, versions = _wait_card(ref, "completed")
    assert versions == 2  # waiting for approval, completed: one per step
    assert "executed" in done and "DEMO-OSTERGOTLAND-HEAD" in done
    _no_personal_data(done)

    other = submit(ad, body("seal_or_lock"))
    wait_status(ad, other, "awaiting_assessment")
    _wait_card(other, "awaiting_assessment")
    asyncio.run(commands.cancel(ad, other, "DEMO-KALMAR-CLINICIAN", "Fel patient"))
    cancelled, _ = _wait_card(other, "cancelled", timeout=10)  # published by the command, not a run
    _no_personal_data(cancelled)
