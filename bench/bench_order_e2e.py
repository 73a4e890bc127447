"""Orders end to end with the two human decisions made by a script the moment each order waits for them:
submit -> waiting for the harm assessment, each decision -> the order's next status visible, and completed
orders per second, with N orders in flight.

Layouts (each started by this script on a throwaway Prefect server and orders database, then torn down):
- `embedded` (default): `python -m flows.serve` as `make run` starts it (a warm worker in the serving
  process); Prefect's and the orders' databases on SQLite (`--postgres`: on the local PostgreSQL).
- `production`: PostgreSQL for Prefect and the orders, the deployments in the `restriction-orders` pool and
  two warm workers (`python -m tasks.adapters.warm_worker`), housekeeping in a third process.
`--old-path` measures what came before on the same layout: `prefect.serve` (RO_SERVE_MODE=process, a Python
process per run segment, runner polling every second) or two Prefect process workers (default 10 s poll).

Usage: python bench/bench_order_e2e.py [--layout embedded|production] [--old-path] [--inflight 8[,32]]
                                       [--seconds 30] [--postgres]
Keep runs short on a shared machine; the load average at the start is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import _drop, _pg_databases, _wait, free_port, machine, percentile  # noqa: E402

NEXT: dict[str, tuple[str, str, dict[str, Any]]] = {"awaiting_assessment": ("harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"}),
        "awaiting_approval": ("approval", "DEMO-KALMAR-HEAD", {"approved": True})}
POOL = "restriction-orders"


@contextmanager
def system(layout: str, old_path: bool, postgres: bool) -> Iterator[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="ro-bench-"))
    env = {"RO_DATA_DIR": str(tmp / "data"), "RO_SMTP_PORT": str(free_port()), "RO_DEMO": "true",
           "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
           "PREFECT_UI_ENABLED": "false", "PYTHONPATH": str(ROOT), "RO_HOUSEKEEPING_SECONDS": "1",
           "RO_SERVE_SCHEDULES": "0", "RO_APP_DISPATCH_SECONDS": "0"}
    from tasks.adapters import prefect_auth
    secret = prefect_auth.ensure_secret(prefect_auth.secret_file(tmp / "data"))
    env.update(prefect_auth.client_env(secret))
    dropped: list[str] = []
    if postgres or layout == "production":
        pg_env, dropped = _pg_databases(tmp)
        env.update(pg_env)
    os.environ.update(env)
    from models.regions import load_regions
    from tasks.adapters.database import Database
    from tasks.adapters.demo import seed_demo
    from tasks.adapters.settings import Settings
    from tasks.adapters.smtp_sink import start_sink
    db = Database(Settings().orders_db_url)
    db.migrate()
    seed_demo(db, load_regions())
    db.dispose()
    sink = start_sink(tmp / "mail", port=int(env["RO_SMTP_PORT"]))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(tmp / f"{name}.log", "ab") as log:
            p = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(extra or {})}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    spawn("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
          prefect_auth.server_env(secret, "http://127.0.0.1:8000"))
    _wait(f"{env['PREFECT_API_URL']}/health", 180)
    workers: list[subprocess.Popen[bytes]] = []
    if layout == "embedded":
        workers.append(spawn("serve", [sys.executable, "-m", "flows.serve"],
                             {"RO_SERVE_MODE": "process" if old_path else "warm"}))
    else:
        asyncio.run(_production_pool(old_path))
        for i in range(2):
            args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"] \
                if old_path else [sys.executable, "-m", "tasks.adapters.warm_worker", "--pool", POOL,
                                  "--code-dir", str(ROOT)]
            workers.append(spawn(f"worker-{i}", args))
        # Housekeeping as the embedded process runs it (production runs it every minute from a deployment).
        spawn("housekeeping", [sys.executable, "-c", "import threading, flows.serve as s, flows.bootstrap as b; "
                               "s.housekeeping_loop(b.build(), 1.0)"])
    pool = POOL if layout == "production" else "restriction-orders-embedded"
    _wait_workers(pool, 0 if old_path and layout == "embedded" else len(workers))
    try:
        yield {"tmp": tmp, "workers": workers, "server": procs[0]}
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        sink.stop()
        if dropped:
            _drop(dropped)


def _wait_workers(pool: str, n: int, timeout: float = 300) -> None:
    """Until the deployments are there and `n` workers of the pool have told Prefect they are up."""
    from prefect.client.orchestration import get_client

    async def ready() -> bool:
        async with get_client() as c:
            if len(await c.read_deployments()) < 4:
                return False
            if n == 0:
                return True
            try:
                return len(await c.read_workers_for_work_pool(pool)) >= n
            except Exception:
                return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not asyncio.run(ready()):
        time.sleep(0.5)
    time.sleep(3)  # the workers' event subscriptions and preloads


async def _production_pool(process_pool: bool) -> None:
    """The pool (warm, or process for the old path), its two queues, and the deployments in it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.serve import POOL_QUEUES, pool_deployments
    from tasks.adapters.warm_worker import WarmWorker
    if process_pool:
        from prefect.workers.process import ProcessWorker
        create = WorkPoolCreate(name=POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
    else:
        create = WorkPoolCreate(name=POOL, type="warm", base_job_template=WarmWorker.get_default_base_job_template())
    async with get_client() as client:
        await client.create_work_pool(create)
        for queue, priority in POOL_QUEUES:
            await client.create_work_queue(name=queue, work_pool_name=POOL, priority=priority)
    for d in await asyncio.to_thread(pool_deployments, POOL):
        if process_pool:  # a process worker runs each segment in a new process, in this directory
            d.job_variables = {"working_dir": str(ROOT)}
        await d.aapply()


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of these processes and their children (reaped ones included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
        except OSError:
            continue
    return total


class Driver:
    """N threads, each submitting an order, deciding as soon as it waits, until it completes, then the next."""

    def __init__(self, ad: Any, stop_at: float) -> None:
        self.ad, self.stop_at = ad, stop_at
        self.rng = random.Random(8)
        self.lock = threading.Lock()
        self.first: list[float] = []      # submit -> awaiting_assessment
        self.moves: list[float] = []      # decision stored -> the next status visible
        self.completed: list[float] = []  # time.monotonic() when each order completed

    def one(self) -> None:
        from flows import commands
        from tasks.steps import orders
        from tests.webapp import born_years_ago, pnr
        with self.lock:  # a new patient each time: one open order per patient and restriction
            number = pnr(born_years_ago(20 + self.rng.randrange(50), self.rng.randrange(365)),
                         serial=self.rng.randrange(100, 999))
        body = {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal", "lock_login"],
                "patient_personal_number": number, "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar",
                "reason": "Hot mot patienten"}
        t0 = time.monotonic()
        out = asyncio.run(commands.submit(self.ad, body, "DEMO-KALMAR-CLINICIAN"))
        if out.order is None:
            return
        ref, last, since = out.order.reference, "submitted", t0
        while time.monotonic() < self.stop_at:
            with self.ad.db.session() as s:
                st = orders.get(s, ref).status
            if st != last:
                now = time.monotonic()
                (self.first if last == "submitted" else self.moves).append(now - since)
                last = st
                if st == "completed":
                    self.completed.append(now)
                    return
                if st in NEXT:
                    stage, actor, decision = NEXT[st]
                    since = time.monotonic()
                    asyncio.run(commands.decide(self.ad, ref, stage, actor, decision))
            time.sleep(0.05)

    def loop(self) -> None:
        while time.monotonic() < self.stop_at:
            try:
                self.one()
            except Exception as exc:  # a conflict, a hiccup: count nothing, go on
                print(f"  driver: {type(exc).__name__}: {exc}"[:200], flush=True)


def measure(ad: Any, inflight: int, seconds: float, pids: list[int]) -> dict[str, Any]:
    warm = time.monotonic() + seconds
    d = Driver(ad, warm + 60)  # orders started in the window may finish a minute after it
    cpu0 = cpu_seconds(pids)
    t0 = time.monotonic()
    d.stop_at = t0 + seconds
    threads = [threading.Thread(target=d.loop, daemon=True) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)
    done = [c for c in d.completed if c <= t0 + seconds]
    return {"inflight": inflight, "seconds": seconds, "completed": len(done), "per_s": len(done) / seconds,
            "first": d.first, "moves": d.moves, "cpu": cpu_seconds(pids) - cpu0}


def fmt(values: list[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f} s (n={len(values)})" if values else "—"


def main() -> None:
    import faulthandler
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: where every thread is
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=["embedded", "production"], default="embedded")
    ap.add_argument("--old-path", action="store_true", help="prefect.serve / Prefect process workers instead")
    ap.add_argument("--postgres", action="store_true", help="embedded layout on PostgreSQL")
    ap.add_argument("--inflight", default="8")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with system(args.layout, args.old_path, args.postgres) as sysm:
        from flows.bootstrap import build
        ad = build()
        pids = [p.pid for p in sysm["workers"]] + [sysm["server"].pid]
        path = "old path" if args.old_path else "warm worker"
        print(f"bench_order_e2e {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.layout} ({path}), "
              f"{'PostgreSQL' if args.postgres or args.layout == 'production' else 'SQLite'}; {machine()}; "
              f"load {load:.1f} at the start", flush=True)
        warm = Driver(ad, time.monotonic() + 120)
        t0 = time.monotonic()
        warm.one()  # one order through first: imports, caches, connections
        print(f"  warm-up order: {'completed' if warm.completed else 'NOT completed'} in {time.monotonic() - t0:.1f} s",
              flush=True)
        for n in [int(x) for x in args.inflight.split(",")]:
            r = measure(ad, n, args.seconds, pids)
            print(f"  {n} in flight, {r['seconds']:.0f} s: {r['completed']} completed = {r['per_s']:.2f} orders/s; "
                  f"submit -> waiting p50/p95 {fmt(r['first'])}; decision -> next status p50/p95 {fmt(r['moves'])}; "
                  f"CPU (server + workers) {r['cpu']:.1f} s; load now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
