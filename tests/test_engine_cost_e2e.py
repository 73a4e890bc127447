"""What one order costs in Prefect objects on the real path (the embedded warm worker): one flow run, a
segment per human step waited for plus the first, and a task run per step a person reading the run needs to
see (README "Execution model", cost model). Also: the segments run on the warm worker (no process per
segment) and each suspension is logged at INFO, not ERROR."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any
from uuid import UUID

import pytest

from tasks.adapters import Adapters
from tests.conftest import FlowServer
from tests.e2e import aged, body, decide, submit, wait_status

pytestmark = pytest.mark.e2e


async def _costs(reference: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    async with get_client() as c:
        runs = await c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[reference])))
        run = runs[0]
        tasks = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        states = await c.read_flow_run_states(run.id)
        logs = await c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(run.id))])))
    return {"flow_runs": len(runs), "task_runs": Counter(t.name.rsplit("-", 1)[0] for t in tasks),
            "segments": sum(1 for s in states if s.type.value == "RUNNING"), "labels": run.labels or {},
            "finished": [(lg.level, lg.message) for lg in logs if lg.message.startswith("Finished in state")]}


def test_one_order_costs_one_flow_run_three_segments_and_five_task_runs(prefect_ad: Adapters,
                                                                         flow_server: FlowServer) -> None:
    ad = prefect_ad
    ref = submit(ad, body("seal_or_lock", patient_personal_number=aged(38, 811)))
    wait_status(ad, ref, "awaiting_assessment")
    decide(ad, ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    wait_status(ad, ref, "awaiting_approval")
    decide(ad, ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
    wait_status(ad, ref, "completed")
    costs = asyncio.run(_costs(ref))
    deadline = time.monotonic() + 30  # the worker sends its runs' logs in batches: wait for all three segments'
    while len(costs["finished"]) < 3 and time.monotonic() < deadline:
        time.sleep(1)
        costs = asyncio.run(_costs(ref))
    print(costs)
    assert costs["flow_runs"] == 1
    assert costs["segments"] == 3  # the first, and one per human step waited for
    assert costs["task_runs"] == Counter({"receive-order": 1, "record-decision": 2, "execute-order": 1,
                                          "send-confirmations": 1}), costs["task_runs"]
    assert costs["labels"].get("prefect.worker.type") == "warm", costs["labels"]
    levels = Counter(level for level, _ in costs["finished"])
    assert levels.get(40, 0) == 0 and levels.get(20, 0) >= 2, costs["finished"]  # suspensions at INFO
