"""`restriction-orders deploy` (tasks/adapters/deploy.py): what it reads from prefect.yaml, and what it leaves
on a real (locked) Prefect server, read back, after running twice.

The session's served flows have deployments named as prefect.yaml's (`seal-or-lock/seal-or-lock`), and
deploying over one takes it over; so the end-to-end test deploys a copy of prefect.yaml whose deployment
names carry a suffix and whose pool has a name of its own, and deletes what it made.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from forms.cli import main
from tasks.adapters import Adapters
from tasks.adapters.automations import all_specs
from tasks.adapters.deploy import PREFECT_FILE, DeployError, deploy, read_plan
from tests.conftest import ROOT
from tests.test_deploy_e2e import assert_schedules

POOL = "ro-deploycli"
SUFFIX = "-deploycli"
TEXT = PREFECT_FILE.read_text(encoding="utf-8")
SPEC = yaml.safe_load(TEXT)


def test_the_plan_is_what_prefect_yaml_says() -> None:
    plan = read_plan()
    # Pool type and priorities are read from the file (its header's commands or `type:`/`priority:` keys).
    from tasks.adapters.warm_worker import WORKER_TYPE
    declared = re.search(r"work-pool create (\S+) --type (\S+)", TEXT)
    pools = SPEC["definitions"]["work_pools"].values()
    by_worker = WORKER_TYPE if "tasks.adapters.warm_worker" in TEXT else None  # the worker's own type
    want_type = next((p["type"] for p in pools if p.get("type")), declared.group(2) if declared else by_worker)
    assert (plan.pool.name, plan.pool.type) == ("restriction-orders", want_type)
    assert plan.pool.queues["urgent"] < plan.pool.queues["orders"]
    assert [d["name"] for d in plan.deployments] == [d["name"] for d in SPEC["deployments"]]
    assert plan.worker_command and "--pool restriction-orders" in plan.worker_command
    assert plan.worker_command in TEXT or plan.worker_command == SPEC["definitions"].get("worker_command")


def test_a_header_with_a_warm_worker_command_gives_the_warm_type(tmp_path: Path) -> None:
    """prefect.yaml as the warm-worker change writes it: no `work-pool create`, the worker's own command."""
    from tasks.adapters.warm_worker import WORKER_TYPE
    command = "python -m tasks.adapters.warm_worker --pool restriction-orders --code-dir /srv/restriction-orders"
    text = re.sub(r"(?m)^#   prefect work-pool create .*$\n", "", TEXT)
    text = re.sub(r"(?m)^#   prefect worker start .*$", f"#   {command}\n#       (on each worker machine)", text)
    path = tmp_path / "prefect.yaml"
    path.write_text(text)
    plan = read_plan(path, ROOT)
    assert (plan.pool.type, plan.worker_command) == (WORKER_TYPE, command)
    assert plan.pool.queues == {"urgent": 1, "orders": 2}


def test_a_file_without_a_pool_type_or_a_queue_priority_is_refused(tmp_path: Path) -> None:
    no_type = tmp_path / "no-type.yaml"
    # Neither a `--type`, a `type:` key nor a worker command whose module names its type.
    no_type.write_text(re.sub(r" --type \S+", "", TEXT).replace("type: ", "kind: ")
                       .replace("tasks.adapters.warm_worker", "some.other.worker"))
    with pytest.raises(DeployError, match="needs exactly one type"):
        read_plan(no_type, ROOT)
    no_priority = tmp_path / "no-priority.yaml"
    no_priority.write_text(re.sub(r" --priority \d+", "", TEXT).replace("priority: ", "rank: "))
    with pytest.raises(DeployError, match="no priority"):
        read_plan(no_priority, ROOT)


def _copy(tmp_path: Path) -> Path:
    text = re.sub(r"(?m)^(  - name: )(\S+)$", rf"\g<1>\g<2>{SUFFIX}", TEXT).replace("restriction-orders", POOL)
    path = tmp_path / "prefect.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def _read_back() -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    async with get_client() as c:
        pool = await c.read_work_pool(POOL)
        queues = {q.name: q.priority for q in await c.read_work_queues(work_pool_name=POOL)}
        deps = await c.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])))
        same_names = await c.read_deployments(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[d["name"] + SUFFIX for d in SPEC["deployments"]])))
        automations = {a.name: len(await c.read_automations_by_name(a.name)) for a in all_specs()}
    return {"pool": pool, "queues": queues, "deployments": deps, "same_names": same_names,
            "automations": automations}


async def _delete() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    async with get_client() as c:
        for d in await c.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL]))):
            await c.delete_deployment(d.id)
        await c.delete_work_pool(POOL)


@pytest.mark.e2e
def test_deploy_twice_against_prefect_then_read_back(prefect_server: str, ad: Adapters, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(tmp_path)
    plan = read_plan(copy, ROOT)
    try:
        assert main(["deploy", "--prefect-file", str(copy), "--project-dir", str(ROOT)], ad=ad) == 0
        first = capsys.readouterr().out
        assert f"arbetspool {POOL} ({plan.pool.type}): created" in first
        assert "kö urgent (prioritet 1): created" in first and plan.worker_command in first
        once = asyncio.run(_read_back())
        assert main(["deploy", "--prefect-file", str(copy), "--project-dir", str(ROOT)], ad=ad) == 0
        second = capsys.readouterr().out
        assert "kö urgent (prioritet 1): unchanged" in second and ": created" not in second
        twice = asyncio.run(_read_back())

        assert twice["pool"].type == plan.pool.type and twice["pool"].id == once["pool"].id
        # Prefect gives every pool a `default` queue (it cannot be deleted); nothing is deployed to it.
        assert twice["queues"] == once["queues"] == {**plan.pool.queues, "default": 3}
        assert twice["queues"]["urgent"] < twice["queues"]["orders"]
        # Ten deployments, once each, the same ids after the second run: updated in place, not duplicated.
        assert len(twice["deployments"]) == len(twice["same_names"]) == len(SPEC["deployments"]) == 10
        assert {d.id for d in twice["deployments"]} == {d.id for d in once["deployments"]}
        assert set(twice["automations"].values()) == {1}, twice["automations"]
        by_name = {d.name.removesuffix(SUFFIX): d for d in twice["deployments"]}
        for d in SPEC["deployments"]:
            dep = by_name[d["name"]]
            assert dep.entrypoint == d["entrypoint"]
            assert (dep.work_pool_name, dep.work_queue_name) == (POOL, d["work_pool"]["work_queue_name"])
            assert set(dep.tags) == {t.replace("restriction-orders", POOL) for t in d["tags"]}
            assert_schedules(dep, d)
            props = set((dep.parameter_openapi_schema or {}).get("properties", {}))
            assert props <= {"reference", "now"}, (dep.name, props)  # no personal data can be passed
            assert dep.pull_steps and "set_working_directory" in str(dep.pull_steps[0])

        # A pool of another type is not silently kept: Prefect cannot change a pool's type.
        other = "process" if plan.pool.type != "process" else "warm"
        with pytest.raises(DeployError, match="drain it"):
            deploy(type(plan)(pool=type(plan.pool)(POOL, other, plan.pool.queues), deployments=[], pull=[],
                              worker_command=""), automations=False)
    finally:
        asyncio.run(_delete())


def test_deploy_says_so_when_prefect_cannot_be_reached(ad: Adapters, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["deploy", "--no-automations"], ad=ad) == 3
    assert "svarar inte" in capsys.readouterr().err


def test_every_production_step_names_tests_that_exist() -> None:
    """README "Production layout": seven numbered steps, each naming the tests that show it works."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Production layout"):readme.index("## Pinned and why")]
    steps = re.split(r"(?m)^\d\. ", section)[1:]
    assert len(steps) == 7
    for step in steps:
        named = re.findall(r"`(tests/\w+\.py)(?:::(\w+))?`", step)
        assert named, step[:80]
        for path, name in named:
            source = (ROOT / path).read_text(encoding="utf-8")
            assert not name or re.search(rf"(?m)^(async )?def {name}\(", source), f"{path}::{name}"
