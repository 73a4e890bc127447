"""Production's deployments: `prefect --no-prompt deploy --all` from the project root against the session's
Prefect server, into the process work pool `restriction-orders` with its two queues, and what an order's run
gets from them: urgent orders go to the urgent queue (with priority), also when made urgent later.

prefect.yaml's deployments have the same flow/name as the served ones of the embedded default (e.g.
`seal-or-lock/seal-or-lock`), and deploying over a served deployment takes it over (same id, moved to the
pool; prefect-3-notes §2). So the test deploys a copy of prefect.yaml whose deployment names carry a
suffix, and deletes what it created: the session's served flows, which other tests use, are never touched.
The orders here live in this module's own database, so the session's reconciler never sees them, and
this module's own adapters (a Prefect engine of their own, so its memory of deployments' work pools is
this test's alone).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import Flow
from prefect.deployments.flow_runs import arun_deployment
from prefect.flows import load_flow_from_entrypoint

from flows import urgent
from flows.bootstrap import build
from tasks.adapters import Adapters
from tasks.adapters import engine as engine_module
from tasks.adapters.database import Database
from tasks.adapters.engine import URGENT_QUEUE, URGENT_TAG
from tasks.adapters.settings import Settings
from tasks.steps import orders, runs, urgency
from tests.conftest import ROOT, own_database
from tests.e2e import aged, body

pytestmark = pytest.mark.e2e
POOL = "restriction-orders"
SUFFIX = "-deploytest"
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deploy_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "deploy", first_reference=950000)


def _flows_in_code() -> set[str]:
    """Every Prefect flow defined in flows/*.py, as `path:attribute` (the entrypoint Prefect loads it by).
    The order flows are made by a function (flows/order.py), not written with `@flow`, so the modules are
    imported and their flows looked up, not parsed."""
    found = set()
    for path in sorted((ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found.add(f"flows/{path.name}:{attr}")
    return found


def _flow_name(entrypoint: str) -> str:
    """The flow's name, loaded by its entrypoint as `prefect deploy` loads it."""
    return load_flow_from_entrypoint(str(ROOT / entrypoint)).name


def assert_schedules(dep: Any, d: dict[str, Any]) -> None:
    """A deployment read back from Prefect has the schedules `prefect.yaml` gives it (`d`), active or not."""
    want = d.get("schedules", [])
    assert len(dep.schedules) == len(want), (dep.name, dep.schedules)
    for s, w in zip(dep.schedules, want, strict=True):
        assert s.active is w["active"]
        if "interval" in w:
            assert s.schedule.interval.total_seconds() == w["interval"]
        else:
            assert (s.schedule.cron, s.schedule.timezone) == (w["cron"], w["timezone"])


def test_prefect_yaml_has_one_deployment_per_flow_and_serve_serves_the_same() -> None:
    entrypoints = [d["entrypoint"] for d in PREFECT_YAML["deployments"]]
    assert len(entrypoints) == len(set(entrypoints)) == 10
    assert set(entrypoints) == _flows_in_code()
    from flows.order import ORDER_FLOWS
    from flows.serve import monitoring_deployments, served_flows
    from models.routine import FLOW_NAMES, ORDER_FLOW_NAMES
    served = {f.name for f in served_flows()} | {d.flow_name for d in monitoring_deployments()}
    assert set(ORDER_FLOW_NAMES) == set(FLOW_NAMES.values()) == {f.name for f in served_flows()[:4]}
    assert {f"flows/order.py:{code}" for code in ORDER_FLOWS} == {
        d["entrypoint"] for d in PREFECT_YAML["deployments"] if d["tags"][1].startswith("type:")}
    # Each order type's deployment runs its own flow: the name its entrypoint loads is the type's flow name.
    assert {d["tags"][1].removeprefix("type:"): _flow_name(d["entrypoint"])
            for d in PREFECT_YAML["deployments"] if d["tags"][1].startswith("type:")} == FLOW_NAMES
    assert served == {_flow_name(e) for e in entrypoints}
    urgent_pool = PREFECT_YAML["definitions"]["work_pools"]["urgent"]
    assert (urgent_pool["name"], urgent_pool["work_queue_name"]) == (POOL, URGENT_QUEUE)


async def _prepare_pool() -> None:
    """What README's production layout does before deploying: the process pool and its queues, urgent first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker
    async with get_client() as c:
        await c.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                                base_job_template=ProcessWorker.get_default_base_job_template()),
                                 overwrite=True)
        for name, priority in ((URGENT_QUEUE, 1), ("orders", 2)):
            await c.create_work_queue(name=name, work_pool_name=POOL, priority=priority)


async def _read_back(names: list[str]) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    async with get_client() as c:
        out = {n: await c.read_deployment_by_name(n) for n in names}
        queues = {q.name: q.priority for q in await c.read_work_queues(work_pool_name=POOL)}
    return {"deployments": out, "queues": queues}


async def _poolless_deployment(names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    async with get_client() as c:
        flow = await c.read_flow_by_name("seal-or-lock")
        await c.create_deployment(flow_id=flow.id, name=f"seal-or-lock{SUFFIX}-served",
                                  entrypoint="flows/order.py:seal_or_lock",
                                  parameter_openapi_schema={"type": "object", "properties": {
                                      "reference": {"type": "string"}}})
    names.append(f"seal-or-lock/seal-or-lock{SUFFIX}-served")


async def _delete(names: list[str], run_ids: list[UUID]) -> None:
    from prefect.client.orchestration import get_client
    async with get_client() as c:
        for run_id in run_ids:
            await c.delete_flow_run(run_id)
        for n in names:
            try:
                dep = await c.read_deployment_by_name(n)
            except Exception:
                continue
            await c.delete_deployment(dep.id)
        await c.delete_work_pool(POOL)


async def _run(run_id: str) -> Any:
    from prefect.client.orchestration import get_client
    async with get_client() as c:
        return await c.read_flow_run(UUID(run_id))


def test_prefect_deploy_all_and_urgent_orders_in_the_urgent_queue(prefect_server: str, settings: Settings,
                                                                   deploy_db: Database, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ad: Adapters = build(settings, db=deploy_db)
    asyncio.run(_prepare_pool())
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        d["name"] += SUFFIX
    copy = tmp_path / "prefect.yaml"
    copy.write_text(yaml.safe_dump(spec, allow_unicode=True))
    names = [f"{_flow_name(d['entrypoint'])}/{d['name']}" for d in spec["deployments"]]
    run_ids: list[UUID] = []
    try:
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                              "--prefect-file", str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "RO_CODE_DIR": str(ROOT), "PREFECT_LOGGING_LEVEL": "WARNING"})
        took = time.monotonic() - started
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        got = asyncio.run(_read_back(names))
        # Urgent work has priority in the pool (1 is first); `prefect deploy` ignores a `priority` key.
        assert got["queues"][URGENT_QUEUE] < got["queues"]["orders"]
        for d, name in zip(PREFECT_YAML["deployments"], names, strict=True):
            dep = got["deployments"][name]
            assert dep.entrypoint == d["entrypoint"]
            assert (dep.work_pool_name, dep.work_queue_name) == (POOL, d["work_pool"]["work_queue_name"]), name
            assert set(dep.tags) == set(d["tags"])
            assert_schedules(dep, d)
            # No personal data can be passed: the order reference (or, for the monitors, a time) only.
            props = set((dep.parameter_openapi_schema or {}).get("properties", {}))
            assert props <= {"reference", "now"}, (name, props)
            if d["tags"][1].startswith("type:") or dep.name == f"urgent-order{SUFFIX}":
                assert props == {"reference"} and dep.parameter_openapi_schema["required"] == ["reference"]
            assert dep.pull_steps and "set_working_directory" in str(dep.pull_steps[0])

        # Urgent orders go to the urgent queue, the others to the deployment's own (#3). The engine runs
        # the suffixed copies: it names a deployment `flow/flow`, as prefect.yaml and flows/serve.py do.
        monkeypatch.setattr(engine_module, "deployment_name", lambda flow: f"{flow}/{flow}{SUFFIX}")
        now = datetime.now(UTC)
        refs = {}
        for kind, extra in (("urgent", {"urgent": True}), ("ordinary", {})):
            o = orders.submit(ad, body("seal_or_lock", patient_personal_number=aged(41, 517), **extra),
                              "DEMO-KALMAR-CLINICIAN", now)
            assert o.order is not None
            refs[kind] = o.order.reference
        queue_of = {}
        for kind, ref in refs.items():
            run_id = asyncio.run(runs.start_run(ad, ref))
            assert run_id
            run_ids.append(UUID(run_id))
            queue_of[kind] = asyncio.run(_run(run_id)).work_queue_name
        assert queue_of == {"urgent": URGENT_QUEUE, "ordinary": "orders"}

        # A deployment without a work pool (as every served one of the embedded default) refuses a queue
        # name, so none is passed to it: the urgent order's run starts all the same.
        asyncio.run(_poolless_deployment(names))
        monkeypatch.setattr(engine_module, "deployment_name", lambda flow: f"{flow}/{flow}{SUFFIX}-served")
        assert asyncio.run(ad.engine.work_queue_for("seal-or-lock", True)) is None
        with pytest.raises(Exception, match="not associated with a work pool"):
            asyncio.run(arun_deployment(f"seal-or-lock/seal-or-lock{SUFFIX}-served", timeout=0,
                                        parameters={"reference": "RO-2026-000000"}, work_queue_name="urgent"))
        o = orders.submit(ad, body("seal_or_lock", patient_personal_number=aged(42, 518), urgent=True),
                          "DEMO-KALMAR-CLINICIAN", now)
        assert o.order is not None
        served_run = asyncio.run(runs.start_run(ad, o.order.reference))
        assert served_run
        run_ids.append(UUID(served_run))
        assert asyncio.run(_run(served_run)).work_queue_name is None
        monkeypatch.setattr(engine_module, "deployment_name", lambda flow: f"{flow}/{flow}{SUFFIX}")

        # Made urgent while its run waits (nothing executes it here: no worker): replaced in the urgent queue.
        ref = refs["ordinary"]
        urgency.make_urgent(ad, ref, "DEMO-KALMAR-ONCALL", now)
        moved = asyncio.run(urgent.ensure_run(ad, ref))
        assert moved and UUID(moved) not in run_ids
        run_ids.append(UUID(moved))
        new, old = asyncio.run(_run(moved)), asyncio.run(_run(str(run_ids[1])))  # the ordinary one's first
        assert new.work_queue_name == URGENT_QUEUE and URGENT_TAG in new.tags
        assert old.state is not None and old.state.is_cancelled()
        with ad.db.session() as s:
            assert orders.get(s, ref).flow_run_id == moved
        assert asyncio.run(urgent.ensure_run(ad, ref)) == moved  # once: it is in the urgent queue now
        assert runs.run_history(ad, ref).restarts_since_progress == 0  # not a failure
        print(f"prefect deploy --all: {took:.1f} s")
    finally:
        asyncio.run(_delete(names, run_ids))
