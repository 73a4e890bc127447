"""A throwaway embedded system for benchmarks: temp SQLite orders DB, Prefect server, SMTP sink, served flows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

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


@contextmanager
def embedded(extra_env: dict[str, str] | None = None, serve: bool = True) -> Iterator[dict[str, object]]:
    tmp = Path(tempfile.mkdtemp(prefix="ro-bench-"))
    env = {
        "RO_DATA_DIR": str(tmp / "data"), "RO_SMTP_PORT": str(free_port()),
        "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_UI_ENABLED": "false", "PYTHONPATH": str(ROOT),
        "RO_HOUSEKEEPING_SECONDS": "1", **(extra_env or {}),
    }
    os.environ.update(env)
    from tasks.database import migrate
    from tasks.demo import seed_demo
    from tasks.smtp_sink import start_sink
    migrate()
    seed_demo()
    sink = start_sink(tmp / "mail", port=int(env["RO_SMTP_PORT"]))
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    procs: list[subprocess.Popen[bytes]] = []
    with open(tmp / "server.log", "ab") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", port], env=os.environ.copy(), stdout=log, stderr=log))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    serve_proc = None
    if serve:
        with open(tmp / "serve.log", "ab") as log:
            serve_proc = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=ROOT, env=os.environ.copy(),
                                          stdout=log, stderr=log)
        procs.append(serve_proc)
        time.sleep(8)
    try:
        yield {"tmp": tmp, "mail": tmp / "mail", "serve": serve_proc}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        sink.stop()
