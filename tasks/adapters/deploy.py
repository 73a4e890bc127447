"""`restriction-orders deploy`: the project's Prefect objects on the Prefect server at PREFECT_API_URL (with
PREFECT_API_AUTH_STRING), created or brought up to date, as often as one likes:

1. the work pool, of the type prefect.yaml gives it (its base job template is the worker type's default);
2. its queues with their priorities (`urgent` 1, `orders` 2): `prefect deploy` ignores a priority and creates
   a missing queue at the lowest one, so they are made first;
3. every deployment in prefect.yaml, through Prefect's own deploy API (`RunnerDeployment.apply`, what
   `prefect deploy` calls; it updates a deployment of the same flow and name in place, schedules replaced);
4. the shipped automations (tasks/adapters/automations.py, by name).

prefect.yaml is the one description of the production layout: deployments, pool and queues as Prefect reads
them, and the pool's type, the queues' priorities and the worker command, which Prefect's schema has no place
for, either as extra keys of a `definitions.work_pools` entry (`type:`, `priority:`, ignored by `prefect
deploy`) or in the commands of its header comment (`prefect work-pool create NAME --type T`, `prefect
work-queue create Q --pool NAME --priority N`, the worker's start command: `python -m tasks.adapters.warm_worker
--pool NAME` gives the type of the worker that module defines, `warm`). Nothing here names a type.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
PREFECT_FILE = ROOT / "prefect.yaml"
_WORKER_COMMAND = re.compile(r"^(prefect worker start .*|python -m tasks\.adapters\.warm_worker .*)$")


class DeployError(Exception):
    """prefect.yaml cannot be deployed as it is, or the server holds something deploy must not change."""


@dataclass(frozen=True)
class PoolPlan:
    name: str
    type: str
    queues: dict[str, int]  # name -> priority (1 first)


@dataclass(frozen=True)
class DeployPlan:
    pool: PoolPlan
    deployments: list[dict[str, Any]]
    pull: list[dict[str, Any]]
    worker_command: str
    project_dir: Path = ROOT

    def renamed(self, suffix: str, pool: str) -> DeployPlan:
        """The same plan with every deployment's name suffixed and another pool (tests beside served flows)."""
        deps = [{**d, "name": d["name"] + suffix, "work_pool": {**d["work_pool"], "name": pool}}
                for d in self.deployments]
        return replace(self, pool=replace(self.pool, name=pool), deployments=deps,
                       worker_command=self.worker_command.replace(self.pool.name, pool))


@dataclass
class DeployReport:
    pool: str = ""
    queues: dict[str, str] = field(default_factory=dict)       # name -> created / priority changed / unchanged
    deployments: dict[str, str] = field(default_factory=dict)  # flow/name -> id
    automations: dict[str, str] = field(default_factory=dict)  # name -> id


def _comment_commands(text: str) -> list[list[str]]:
    """The shell commands written in prefect.yaml's comments, split as a shell would."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            command = stripped.lstrip("#").strip()
            if command.startswith(("prefect ", "python -m ")):
                out.append(shlex.split(command.split("  ")[0]))
    return out


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words and words.index(name) + 1 < len(words) else None


def _pool_name(spec: dict[str, Any]) -> str:
    pools = (spec.get("definitions") or {}).get("work_pools") or {}
    names = {p["name"] for p in pools.values()} | {d["work_pool"]["name"] for d in spec.get("deployments", [])}
    if len(names) != 1:
        raise DeployError(f"prefect.yaml: one work pool expected, found {sorted(names)}")
    return str(names.pop())


def _worker_type(worker_command: str) -> str | None:
    """The worker type a `python -m MODULE …` worker command starts (its module's BaseWorker subclass)."""
    import importlib

    from prefect.workers.base import BaseWorker
    words = worker_command.split()
    if words[:2] != ["python", "-m"] or len(words) < 3:
        return _option(words, "--type")
    module = importlib.import_module(words[2])
    types = {v.type for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, BaseWorker) and v.__module__ == module.__name__}
    return types.pop() if len(types) == 1 else None


def _pool_type(name: str, pools: dict[str, Any], commands: list[list[str]], worker_command: str) -> str:
    """From a `type:` key, else the header's `prefect work-pool create NAME --type T`, else the worker command."""
    types = {p["type"] for p in pools.values() if p.get("type")}
    types |= {_option(c, "--type") for c in commands if c[:3] == ["prefect", "work-pool", "create"]
              and len(c) > 3 and c[3] == name} - {None}
    if not types and (from_worker := _worker_type(worker_command)):
        types = {from_worker}
    if len(types) != 1:
        raise DeployError(f"prefect.yaml: the pool {name!r} needs exactly one type, found {sorted(map(str, types))}")
    return str(types.pop())


def _queue_priorities(name: str, pools: dict[str, Any], commands: list[list[str]]) -> dict[str, int]:
    queues: dict[str, int] = {}
    for c in commands:
        if c[:3] == ["prefect", "work-queue", "create"] and _option(c, "--pool") == name and _option(c, "--priority"):
            queues[c[3]] = int(_option(c, "--priority") or 0)
    for p in pools.values():
        if "priority" in p:
            queues[p["work_queue_name"]] = int(p["priority"])
    return queues


def _pool_plan(spec: dict[str, Any], commands: list[list[str]], worker_command: str) -> PoolPlan:
    pools = (spec.get("definitions") or {}).get("work_pools") or {}
    name = _pool_name(spec)
    queues = _queue_priorities(name, pools, commands)
    used = {d["work_pool"].get("work_queue_name") for d in spec.get("deployments", [])} - {None}
    if missing := used - set(queues):
        raise DeployError(f"prefect.yaml: no priority for the queue(s) {sorted(missing)}")
    return PoolPlan(name=name, type=_pool_type(name, pools, commands, worker_command), queues=queues)


def read_plan(prefect_file: Path = PREFECT_FILE, project_dir: Path | None = None) -> DeployPlan:
    """What prefect.yaml asks for. Raises DeployError when something is missing or ambiguous."""
    text = prefect_file.read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    commands = _comment_commands(text)
    workers = [" ".join(c) for c in commands if _WORKER_COMMAND.match(" ".join(c))]
    worker = str((spec.get("definitions") or {}).get("worker_command") or (workers[-1] if workers else ""))
    pool = _pool_plan(spec, commands, worker)
    return DeployPlan(pool=pool, deployments=list(spec["deployments"]), pull=list(spec.get("pull") or []),
                      worker_command=worker, project_dir=project_dir or prefect_file.parent)


def _ensure_pool(client: Any, pool: PoolPlan) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.base import BaseWorker

    from tasks.adapters import warm_worker  # noqa: F401  registers the `warm` worker type
    try:
        existing = client.read_work_pool(pool.name)
    except ObjectNotFound:
        worker = BaseWorker.get_worker_class_from_type(pool.type)
        if worker is None:
            raise DeployError(f"unknown worker type {pool.type!r} for the pool {pool.name!r}") from None
        client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type,
                                               base_job_template=worker.get_default_base_job_template()))
        return "created"
    if existing.type != pool.type:
        # Prefect cannot change a pool's type; deleting it would also orphan its deployments' queued runs.
        raise DeployError(f"the pool {pool.name!r} is of type {existing.type!r}, prefect.yaml says {pool.type!r}: "
                          f"drain it, `prefect work-pool delete {pool.name}`, and deploy again")
    return "unchanged"  # its job template may carry the operator's job variables: left as it is


def _ensure_queues(client: Any, pool: PoolPlan) -> dict[str, str]:
    out = {}
    existing = {q.name: q for q in client.read_work_queues(work_pool_name=pool.name)}
    for name, priority in sorted(pool.queues.items(), key=lambda kv: kv[1]):
        queue = existing.get(name)
        if queue is None:
            client.create_work_queue(name=name, work_pool_name=pool.name, priority=priority)
            out[name] = "created"
        elif queue.priority != priority:
            client.update_work_queue(queue.id, priority=priority)
            out[name] = "priority changed"
        else:
            out[name] = "unchanged"
    return out


class _PullSteps:
    """Storage that is only pull steps (what `prefect deploy` stores from prefect.yaml's `pull:`); it has what
    Prefect's RunnerStorage protocol asks for, and nothing is ever pulled from here."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps
        self._base = ROOT

    def set_base_path(self, path: Path) -> None:
        self._base = path

    @property
    def destination(self) -> Path:
        return self._base

    @property
    def pull_interval(self) -> int:
        return 60

    async def pull_code(self) -> None:
        return None

    def to_pull_step(self) -> list[dict[str, Any]]:
        return self.steps

    def __eq__(self, other: object) -> bool:
        return self.steps == getattr(other, "steps", None)


def _schedules(d: dict[str, Any]) -> list[dict[str, Any]] | None:
    from datetime import timedelta

    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    if "schedules" not in d:
        return None  # as `prefect deploy`: no schedules key, nothing sent (an empty list is deprecated)
    out = []
    for s in d["schedules"] or []:
        kw = {"timezone": s["timezone"]} if s.get("timezone") else {}
        schedule = (CronSchedule(cron=s["cron"], **kw) if "cron" in s
                    else IntervalSchedule(interval=timedelta(seconds=s["interval"]), **kw))
        out.append({"schedule": schedule, "active": bool(s.get("active", True))})
    return out


def _apply_deployment(plan: DeployPlan, d: dict[str, Any]) -> tuple[str, str]:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    path, _, attr = d["entrypoint"].partition(":")
    flow: Any = load_flow_from_entrypoint(f"{plan.project_dir / path}:{attr}")
    deployment = RunnerDeployment(
        name=d["name"], flow_name=flow.name, entrypoint=d["entrypoint"],
        work_pool_name=d["work_pool"]["name"], work_queue_name=d["work_pool"].get("work_queue_name"),
        description=d.get("description") or flow.description, tags=d.get("tags") or [],
        parameters=d.get("parameters") or {}, storage=_PullSteps(d.get("pull", plan.pull)),
        job_variables=d["work_pool"].get("job_variables") or {},
    )
    deployment._parameter_openapi_schema = parameter_schema(flow)
    # prefect.yaml's schedules replace the deployment's; without any, the deployment is left without.
    return f"{flow.name}/{d['name']}", str(deployment.apply(schedules=_schedules(d)))


def deploy(plan: DeployPlan, notify_block: str | None = None, automations: bool = True) -> DeployReport:
    """Create or update pool, queues, deployments and (unless told not to) the automations. Raises DeployError,
    or Prefect's/httpx's error when the server cannot be reached or refuses the credentials."""
    from prefect.client.orchestration import get_client
    report = DeployReport()
    with get_client(sync_client=True) as client:
        report.pool = _ensure_pool(client, plan.pool)
        report.queues = _ensure_queues(client, plan.pool)
    for d in plan.deployments:
        name, deployment_id = _apply_deployment(plan, d)
        report.deployments[name] = deployment_id
    if automations:
        from tasks.adapters.automations import ensure_all
        report.automations = ensure_all(notify_block)
    return report
