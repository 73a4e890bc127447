"""A throwaway embedded system for benchmarks: temp SQLite orders DB, Prefect server, SMTP sink, served flows."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.adapters.processes import stop_all, wait_http

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its children, in MiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


PG_ADMIN = os.environ.get("RO_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _pg_databases(tmp: Path) -> tuple[dict[str, str], list[str]]:
    """A fresh orders database and a fresh Prefect database on the local PostgreSQL (production's layout)."""
    import sqlalchemy as sa
    names = [f"ro_bench_orders_{tmp.name[-8:].lower()}", f"ro_bench_prefect_{tmp.name[-8:].lower()}"]
    eng = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        for n in names:
            c.execute(sa.text(f"CREATE DATABASE {n}"))
    eng.dispose()
    eng = sa.create_engine(f"{PG_ADMIN}/{names[1]}", isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    eng.dispose()
    base = PG_ADMIN.split("://", 1)[1]
    return {"DATABASE_URL": f"{PG_ADMIN}/{names[0]}",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{base}/{names[1]}"}, names


def _drop(names: list[str]) -> None:
    import sqlalchemy as sa
    eng = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        for n in names:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
    eng.dispose()


def _wait(url: str, timeout: float) -> None:
    wait_http(url, timeout)


@contextmanager
def embedded(extra_env: dict[str, str] | None = None, serve: bool = True, app: bool = False,
             postgres: bool = False) -> Iterator[dict[str, object]]:
    """The embedded default (SQLite for orders and for Prefect) or, with `postgres`, production's layout:
    PostgreSQL for the orders and for Prefect's own database. `app` also starts the form app (uvicorn)."""
    tmp = Path(tempfile.mkdtemp(prefix="ro-bench-"))
    env = {
        "RO_DATA_DIR": str(tmp / "data"), "RO_SMTP_PORT": str(free_port()),
        "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "false", "PYTHONPATH": str(ROOT),
        "RO_HOUSEKEEPING_SECONDS": "1", "RO_SERVE_SCHEDULES": "0", **(extra_env or {}),
    }
    # Prefect's API locked as on the embedded default (tasks/adapters/prefect_auth.py): every process here uses it.
    from tasks.adapters import prefect_auth
    secret = prefect_auth.ensure_secret(prefect_auth.secret_file(tmp / "data"))
    env.update(prefect_auth.client_env(secret))
    dropped: list[str] = []
    if postgres:
        pg_env, dropped = _pg_databases(tmp)
        env.update(pg_env)
    os.environ.update(env)
    from tasks.adapters.database import migrate
    from tasks.adapters.demo import seed_demo
    from tasks.adapters.smtp_sink import start_sink
    migrate()
    seed_demo()
    sink = start_sink(tmp / "mail", port=int(env["RO_SMTP_PORT"]))
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    procs: list[subprocess.Popen[bytes]] = []
    server_env = {**os.environ, **prefect_auth.server_env(secret, os.environ.get("RO_APP_BASE_URL", "http://127.0.0.1:8000"))}
    with open(tmp / "server.log", "ab") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", port], env=server_env, stdout=log, stderr=log))
    _wait(f"{env['PREFECT_API_URL']}/health", 120)
    serve_proc = app_proc = None
    if serve:
        with open(tmp / "serve.log", "ab") as log:
            serve_proc = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=ROOT, env=os.environ.copy(),
                                          stdout=log, stderr=log, start_new_session=True)
        procs.append(serve_proc)
        time.sleep(8)
    base = ""
    if app:
        app_port = free_port()
        base = f"http://127.0.0.1:{app_port}"
        with open(tmp / "app.log", "ab") as log:
            app_proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "forms.app:create_app", "--factory",
                                         "--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning",
                                         "--no-access-log"], cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=log)
        procs.append(app_proc)
        _wait(f"{base}/healthz", 60)
    try:
        yield {"tmp": tmp, "mail": tmp / "mail", "serve": serve_proc, "app": app_proc, "base": base,
               "prefect": procs[0],
               "db": "PostgreSQL (orders and Prefect)" if postgres else "embedded default (SQLite)"}
    finally:
        stop_all(reversed(procs))
        if serve_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve_proc.pid, 9)
        sink.stop()
        if dropped:
            from tasks.adapters.database import engine
            engine.cache_clear()
            _drop(dropped)


def machine() -> str:
    """One line about where the figures were measured."""
    cpus = os.cpu_count()
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return f"{cpus} cores, {mem} GiB, Python {sys.version.split()[0]}"


def personal_number(rng: random.Random) -> str:
    """A made-up personal number with a valid check digit, an adult born 30-70 years before today."""
    import datetime as dt
    born = dt.date.today() - dt.timedelta(days=rng.randint(30 * 365, 70 * 365))
    serial = f"{rng.randint(100, 999):03d}"
    nine = f"{born:%y%m%d}{serial}"
    total = sum(sum(divmod(int(d) * (2 - i % 2), 10)) for i, d in enumerate(nine))
    return f"{born:%Y%m%d}-{serial}{(10 - total % 10) % 10}"
