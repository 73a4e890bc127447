"""How fast can Prefect move an order-shaped flow on, depending on how its runs are executed?

A toy flow shaped like an order (bench/toy/order_toy.py: receive, suspend for an assessment, record it,
suspend for an approval, record it, execute, confirm, notify; three segments), driven by a script that resumes
each suspension as soon as it sees it (Prefect's events, with a poll beside them), against a local Prefect
server on PostgreSQL and/or on SQLite. Execution modes:

  process        Prefect's process worker (`prefect worker start --type process`), default poll (10 s)
  process-1s     the same with PREFECT_WORKER_QUERY_SECONDS=1
  warm-poll      tasks/adapters/warm_worker.py, polling only (PREFECT_WORKER_QUERY_SECONDS=--warm-poll-seconds)
  warm-events    the warm worker woken by Prefect's events (poll every 10 s as the fallback)

For each it prints resume → flow code running and resume → the next step recorded (p50/p95), submit → first
step, completed toy orders per second with N in flight, worker and server CPU per segment, and with
--task-runs 6,3 what each task run costs.

Usage: python bench/bench_engine_floor.py [--db postgres,sqlite] [--modes warm-events,...] [--inflight 8,32]
       [--seconds 30] [--task-runs 6] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import PG_ADMIN, free_port, machine, percentile, rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = "bench/toy/order_toy.py:toy_order"
MODES = ("process", "process-1s", "warm-poll", "warm-events")
TICKS = os.sysconf("SC_CLK_TCK")
DEBUG = ["--debug"] if os.environ.get("BENCH_WORKER_DEBUG") else []


# -- processes and CPU -------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU of a process, its live descendants and the children it has reaped (flow-run processes)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / TICKS  # utime stime cutime cstime
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return total


def database_backends(name: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving database `name` (the server's pooled connections)."""
    found: dict[int, float] = {}
    for proc in Path("/proc").iterdir() if name else []:
        if not proc.name.isdigit():
            continue
        try:
            if f" {name} " not in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(proc.name)] = sum(int(x) for x in fields[11:13]) / TICKS
        except OSError:
            continue
    return found


def database_cpu_since(before: dict[int, float], name: str) -> float:
    """CPU the database's backends used since `before` (backends that closed meanwhile are not counted)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in database_backends(name).items())


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    return (sum(values) - values[3] - values[4]) / TICKS  # all but idle and iowait


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class PrefectServer:
    """`prefect server start` on a fresh PostgreSQL database (with pg_trgm) or a fresh SQLite file."""

    def __init__(self, db: str, tmp: Path) -> None:
        self.db, self.tmp = db, tmp
        self.api = f"http://127.0.0.1:{free_port()}/api"
        self.pg_name = f"ro_engine_bench_{uuid.uuid4().hex[:8]}" if db == "postgres" else ""
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api, "PREFECT_HOME": str(self.tmp / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}

    def start(self) -> None:
        import httpx
        import sqlalchemy as sa
        env = {**os.environ, **self.env()}
        if self.pg_name:
            eng = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                c.execute(sa.text(f"CREATE DATABASE {self.pg_name}"))
            eng.dispose()
            eng = sa.create_engine(f"{PG_ADMIN}/{self.pg_name}", isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                c.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            eng.dispose()
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = \
                f"postgresql+asyncpg://{PG_ADMIN.split('://', 1)[1]}/{self.pg_name}"
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        with open(self.tmp / "server.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                          "--port", port], env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError("Prefect server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        if self.pg_name:
            import sqlalchemy as sa
            eng = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)"))
            eng.dispose()


# -- one measured run --------------------------------------------------------------------------------------

@dataclass
class Figures:
    mode: str
    db: str
    inflight: int
    task_runs: int
    seconds: float
    completed: int = 0
    segments: int = 0  # segments started while CPU was measured (warm-up and window)
    window_segments: int = 0
    resume_to_code: list[float] = field(default_factory=list)
    resume_to_step: list[float] = field(default_factory=list)
    submit_to_first: list[float] = field(default_factory=list)
    worker_cpu: float = 0.0
    server_cpu: float = 0.0
    database_cpu: float = 0.0
    machine_cpu: float = 0.0
    task_run_count: int = 0
    worker_rss_mib: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds

    def line(self) -> str:
        def pp(xs: list[float]) -> str:
            return f"{percentile(xs, 50) * 1000:6.0f} / {percentile(xs, 95) * 1000:6.0f} ms" if xs else "      — / —     "
        seg = max(self.segments, 1)
        return (f"{self.db:8} {self.mode:12} {self.inflight:3} {self.task_runs:2}  resume→code {pp(self.resume_to_code)}"
                f"  resume→step {pp(self.resume_to_step)}  submit→first {pp(self.submit_to_first)}"
                f"  {self.per_second:5.2f} orders/s ({self.window_segments / max(self.seconds, 1):4.1f} segments/s)  worker {self.worker_cpu / seg * 1000:5.0f} ms"
                f"  server {self.server_cpu / seg * 1000:5.0f} ms  PostgreSQL {self.database_cpu / seg * 1000:4.0f} ms CPU/segment  ({self.completed} orders,"
                f" {self.segments} segments, {self.task_run_count} task runs, workers {self.worker_rss_mib:.0f} MiB)")


async def make_deployment(pool: str, worker_type: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from bench.toy.order_toy import toy_order
    from tasks.adapters.warm_worker import WarmWorker
    template = (ProcessWorker if worker_type == "process" else WarmWorker).get_default_base_job_template()
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type=worker_type, base_job_template=template))
        flow_id = await client.create_flow_from_name("toy-order")
        return await client.create_deployment(
            flow_id=flow_id, name=pool, entrypoint=ENTRYPOINT, work_pool_name=pool,
            parameter_openapi_schema=parameter_schema(toy_order).model_dump_for_openapi(),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}])


def start_workers(mode: str, pool: str, n: int, limit: int, env: dict[str, str], logdir: Path,
                  warm_poll_seconds: float, warm_args: list[str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        wenv = {**env}
        if mode == "process":
            cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                   "--limit", str(limit)]
        elif mode == "process-1s":
            wenv["PREFECT_WORKER_QUERY_SECONDS"] = "1"
            cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                   "--limit", str(limit)]
        else:
            cmd = [sys.executable, "-m", "tasks.adapters.warm_worker", "--pool", pool, "--limit", str(limit), *DEBUG,
                   "--code-dir", str(ROOT), *warm_args]
            if mode == "warm-poll":
                wenv["PREFECT_WORKER_QUERY_SECONDS"] = str(warm_poll_seconds)
                cmd.append("--no-events")
        with open(logdir / f"worker-{pool}-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=wenv, stdout=log, stderr=log, start_new_session=True))
    return procs


async def wait_workers_online(pool: str, n: int, timeout: float = 90) -> None:
    from prefect.client.orchestration import get_client
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            workers = await client.read_workers_for_work_pool(pool)
            if sum(1 for w in workers if w.status.value == "ONLINE") >= n:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"workers of {pool} not online")


class Driver:
    """Keeps `inflight` toy orders going: creates them, resumes each suspension as soon as it is seen, reads
    the steps' marks, and counts the orders done inside the measuring window."""

    def __init__(self, deployment_id: uuid.UUID, inflight: int, task_runs: int, marks: Path, prefix: str) -> None:
        self.deployment_id, self.inflight, self.task_runs = deployment_id, inflight, task_runs
        self.marks, self.prefix = marks, prefix
        self.run_of: dict[str, uuid.UUID] = {}
        self.ref_of: dict[uuid.UUID, str] = {}
        self.created: dict[str, float] = {}
        self.resumes: dict[str, list[float]] = defaultdict(list)
        self.seen_states: set[str] = set()
        self.marks_of: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.done: dict[str, float] = {}
        self.open: set[str] = set()
        self.n = 0
        self.accepting = True
        self.errors: list[str] = []
        self.schema_races = 0

    async def create(self, client: Any) -> None:
        self.n += 1
        ref = f"{self.prefix}-{self.n:05d}"
        self.open.add(ref)
        self.created[ref] = time.time()
        run = await client.create_flow_run_from_deployment(
            self.deployment_id, parameters={"ref": ref, "task_runs": self.task_runs}, name=ref)
        self.run_of[ref], self.ref_of[run.id] = run.id, ref

    async def resume(self, client: Any, run_id: uuid.UUID, state_id: str) -> None:
        from prefect.flow_runs import aresume_flow_run
        if state_id in self.seen_states or run_id not in self.ref_of:
            return
        self.seen_states.add(state_id)
        ref = self.ref_of[run_id]
        t = time.time()
        for attempt in range(20):
            try:
                await aresume_flow_run(run_id, run_input={"ok": True})
                break
            except Exception as exc:
                # Prefect makes the run Suspended before it saves the input schema (flow_runs.py,
                # asuspend_flow_run): a resume in between is refused. Seen here; the app must retry too.
                if "schema not found" in str(exc) and attempt < 19:
                    self.schema_races += 1
                    await asyncio.sleep(0.05)
                    continue
                self.errors.append(f"resume {ref}: {exc}")
                return
        self.resumes[ref].append(t)

    async def watch_events(self, client: Any) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
        flt = EventFilter(event=EventNameFilter(name=["prefect.flow-run.Suspended"]),
                          any_resource=EventAnyResourceFilter(id=[f"prefect.deployment.{self.deployment_id}"]))
        while True:
            try:
                async with get_events_subscriber(filter=flt) as events:
                    async for ev in events:
                        run_id = uuid.UUID(ev.resource.id.removeprefix("prefect.flow-run."))
                        asyncio.create_task(self.resume(client, run_id, str(ev.id)))
            except Exception as exc:
                self.errors.append(f"events: {type(exc).__name__}")
                await asyncio.sleep(1)

    async def poll_suspended(self, client: Any) -> None:
        """The fallback for a missed event (the driver's own latency is not what is measured)."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateName,
        )
        while True:
            await asyncio.sleep(1.0)
            ids = [self.run_of[r] for r in self.open if r in self.run_of]
            if not ids:
                continue
            with contextlib.suppress(Exception):
                runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=ids), state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"]))))
                for r in runs:
                    if r.state is not None:
                        await self.resume(client, r.id, str(r.state.id))

    async def read_marks(self, client: Any) -> None:
        offset = 0
        while True:
            await asyncio.sleep(0.02)
            try:
                with open(self.marks) as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            cut = chunk.rfind("\n") + 1
            offset += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                ref, what, t, _ = line.split()
                if not ref.startswith(self.prefix):
                    continue
                self.marks_of[ref].append((what, float(t)))
                if what == "done" and ref in self.open:
                    self.open.discard(ref)
                    self.done[ref] = float(t)
                    if self.accepting:
                        asyncio.create_task(self.create(client))

    async def run(self, seconds: float) -> tuple[float, float]:
        """Returns the measuring window (start, end) in time.time()."""
        from prefect.client.orchestration import get_client
        async with get_client() as client:
            helpers = [asyncio.create_task(c) for c in (self.watch_events(client), self.poll_suspended(client),
                                                         self.read_marks(client))]
            await asyncio.sleep(0.5)  # the events subscription is up
            start = time.time()
            for _ in range(self.inflight):
                await self.create(client)
            await asyncio.sleep(seconds)
            self.accepting = False
            end = time.time()
            await asyncio.sleep(0.5)
            for h in helpers:
                h.cancel()
            return start, end


def summarise(fig: Figures, d: Driver, start: float, end: float, warmup: float) -> None:
    window_start = start + warmup
    fig.seconds = end - window_start
    fig.completed = sum(1 for t in d.done.values() if window_start <= t <= end)
    for ref, marks in d.marks_of.items():
        codes = [t for what, t in marks if what == "code"]
        fig.segments += sum(1 for t in codes if start <= t <= end)
        fig.window_segments += sum(1 for t in codes if window_start <= t <= end)
        steps = [t for what, t in marks if what in ("record-assess", "record-approve")]
        if codes and ref in d.created:
            first = next((t for what, t in marks if what == "receive"), None)
            if first is not None and d.created[ref] >= window_start:
                fig.submit_to_first.append(first - d.created[ref])
        for t_res in d.resumes.get(ref, []):
            if t_res < window_start:
                continue
            nxt = [t for t in codes if t > t_res]
            if nxt:
                fig.resume_to_code.append(min(nxt) - t_res)
            nstep = [t for t in steps if t > t_res]
            if nstep:
                fig.resume_to_step.append(min(nstep) - t_res)
    fig.errors = d.errors[:5] + ([f"{d.schema_races} resume(s) refused at first: the run was Suspended before "
                                  "its input schema was saved (retried)"] if d.schema_races else [])


async def count_task_runs(deployment_id: uuid.UUID) -> int:
    from prefect.client.orchestration import get_client
    await asyncio.sleep(2)  # task runs reach the database through the server's event pipeline
    async with get_client() as client:
        response = await client.request("POST", "/task_runs/count",
                                        json={"deployments": {"id": {"any_": [str(deployment_id)]}}})
        return int(response.json())


def measure(server: PrefectServer, mode: str, inflight: int, task_runs: int, seconds: float, workers: int,
            tmp: Path, warm_poll_seconds: float, warmup: float, warm_args: list[str]) -> Figures:
    pool = f"bench-{mode}-{inflight}-{task_runs}-{uuid.uuid4().hex[:4]}"
    deployment_id = asyncio.run(make_deployment(pool, "process" if mode.startswith("process") else "warm"))
    marks = tmp / f"marks-{pool}"
    state_dir = tmp / f"state-{pool}"
    state_dir.mkdir()
    env = {**os.environ, **server.env(), "BENCH_MARKS": str(marks), "BENCH_STATE_DIR": str(state_dir),
           "PYTHONPATH": str(ROOT)}
    procs = start_workers(mode, pool, workers, max(inflight, 4), env, tmp, warm_poll_seconds, warm_args)
    fig = Figures(mode, server.db, inflight, task_runs, seconds)
    try:
        asyncio.run(wait_workers_online(pool, workers))
        time.sleep(3 if mode.startswith("warm") else 1)  # the warm worker imports the pool's flows
        driver = Driver(deployment_id, inflight, task_runs, marks, pool)
        w0, s0, m0 = sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(server.proc.pid), machine_busy_seconds()  # type: ignore[union-attr]
        d0 = database_backends(server.pg_name)
        start, end = asyncio.run(driver.run(seconds + warmup))
        fig.worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - w0
        fig.server_cpu = cpu_seconds(server.proc.pid) - s0  # type: ignore[union-attr]
        fig.machine_cpu = machine_busy_seconds() - m0
        fig.database_cpu = database_cpu_since(d0, server.pg_name)
        fig.worker_rss_mib = sum(rss_mib(p.pid) for p in procs)
        summarise(fig, driver, start, end, warmup)
        fig.task_run_count = asyncio.run(count_task_runs(deployment_id))
    finally:
        for p in procs:
            stop(p)
    return fig


async def api_costs(server: PrefectServer, n: int = 100) -> list[tuple[str, float, float]]:
    """(call, wall ms, server CPU ms) per call, each made n times in a row by one client: the price list
    behind a segment (a warm worker's claim makes about seven of these calls before the engine starts)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running
    pool = f"costs-{uuid.uuid4().hex[:4]}"
    deployment_id = await make_deployment(pool, "warm")
    out: list[tuple[str, float, float]] = []
    async with get_client() as client:
        deployment = await client.read_deployment(deployment_id)
        runs: list[Any] = []

        async def create() -> None:
            runs.append(await client.create_flow_run_from_deployment(deployment_id, parameters={"ref": "X"}))

        labels: dict[str, Any] = {"prefect.worker.name": "w", "prefect.worker.type": "warm"}
        def claim_query() -> Any:
            return client.get_scheduled_flow_runs_for_work_pool(pool, scheduled_before=dt.datetime.now(dt.UTC))

        calls = [
            ("claim query, nothing scheduled", claim_query),
            ("create flow run from deployment", create),
            (f"claim query, {n} runs scheduled", claim_query),
            ("read deployment", lambda: client.read_deployment(deployment_id)),
            ("read flow", lambda: client.read_flow(deployment.flow_id)),
            ("read flow run", lambda: client.read_flow_run(runs[0].id)),
        ]
        for name, call in calls:
            c0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()  # type: ignore[union-attr]
            for _ in range(n):
                await call()
            out.append((name, (time.perf_counter() - t0) / n * 1000,
                        (cpu_seconds(server.proc.pid) - c0) / n * 1000))  # type: ignore[union-attr]
        for name, make in (("set state Pending (the claim)", lambda r: client.set_flow_run_state(r.id, Pending())),
                           ("set state Pending 'Submitting'",
                            lambda r: client.set_flow_run_state(r.id, Pending(name="Submitting"))),
                           ("update labels", lambda r: client.update_flow_run_labels(r.id, labels)),
                           ("update infrastructure_pid",
                            lambda r: client.update_flow_run(r.id, infrastructure_pid="host:1")),
                           ("set state Running", lambda r: client.set_flow_run_state(r.id, Running()))):
            c0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()  # type: ignore[union-attr]
            for r in runs[:n]:
                await make(r)
            out.append((name, (time.perf_counter() - t0) / n * 1000,
                        (cpu_seconds(server.proc.pid) - c0) / n * 1000))  # type: ignore[union-attr]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="postgres", help="postgres, sqlite or both (comma-separated)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--inflight", default="8,32")
    ap.add_argument("--task-runs", default="6", help="task runs per toy order: 6, 3, or more (trivial extras)")
    ap.add_argument("--seconds", type=float, default=30, help="measuring window per run")
    ap.add_argument("--warmup", type=float, default=5, help="seconds before the window opens")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per mode")
    ap.add_argument("--warm-poll-seconds", type=float, default=1.0, help="poll interval of warm-poll")
    ap.add_argument("--warm-args", default="", help="extra arguments for the warm worker, e.g. --own-suspension-observers")
    ap.add_argument("--api-costs", action="store_true", help="also price single API calls (wall and server CPU)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker and server logs)")
    args = ap.parse_args()
    os.chdir(ROOT)
    print(f"# bench_engine_floor {dt.datetime.now():%Y-%m-%d %H:%M}, {machine()}, load {os.getloadavg()[0]:.1f}")
    print(f"# window {args.seconds:.0f} s after {args.warmup:.0f} s, {args.workers} worker process(es) per mode"
          + (f", warm worker {args.warm_args}" if args.warm_args else ""))
    results: list[Figures] = []
    for db in args.db.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="ro-engine-bench-"))
        server = PrefectServer(db, tmp)
        server.start()
        os.environ.update(server.env())
        try:
            if args.api_costs:
                for name, wall, cpu in asyncio.run(api_costs(server)):
                    print(f"{db:8} API {name:42} {wall:6.1f} ms wall {cpu:6.1f} ms server CPU")
            for task_runs in (int(x) for x in args.task_runs.split(",") if args.modes):
                for inflight in (int(x) for x in args.inflight.split(",")):
                    for mode in args.modes.split(","):
                        fig = measure(server, mode, inflight, task_runs, args.seconds, args.workers, tmp,
                                      args.warm_poll_seconds, args.warmup, args.warm_args.split())
                        results.append(fig)
                        print(fig.line(), flush=True)
                        for e in fig.errors:
                            print("   !", e)
        finally:
            server.stop()
            if args.keep:
                print(f"# logs in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    by = {(f.db, f.mode, f.inflight, f.task_runs): f for f in results}
    for (db, mode, inflight, k), f in sorted(by.items()):
        for (db2, mode2, inflight2, k2), other in sorted(by.items()):
            if (db2, mode2, inflight2) != (db, mode, inflight) or k2 >= k or not (f.segments and other.segments):
                continue
            # CPU per order (three segments an order), and what the extra task runs add to it, each.
            per_order = {x: (g.worker_cpu / g.segments * 3, (g.server_cpu + g.database_cpu) / g.segments * 3)
                   for x, g in ((k, f), (k2, other))}
            extra = k - k2
            print(f"# {db} {mode} {inflight} in flight, {k} vs {k2} task runs an order: CPU/order worker "
                  f"{per_order[k][0] * 1000:.0f} vs {per_order[k2][0] * 1000:.0f} ms, server+PostgreSQL {per_order[k][1] * 1000:.0f}"
                  f" vs {per_order[k2][1] * 1000:.0f} ms -> per task run {(per_order[k][0] - per_order[k2][0]) / extra * 1000:.0f}"
                  f" + {(per_order[k][1] - per_order[k2][1]) / extra * 1000:.0f} ms CPU;"
                  f" {f.per_second:.2f} vs {other.per_second:.2f} orders/s")


if __name__ == "__main__":
    main()
