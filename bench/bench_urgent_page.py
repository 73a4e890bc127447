"""Submit → page accepted by the SMTP server, for urgent orders on the embedded default.

Starts its own throwaway embedded system: a temporary SQLite orders database, an SMTP server that timestamps
every message it accepts, a Prefect server and the served flows (with their housekeeping loop), then
submits urgent orders through the service layer (`flows.commands.submit`, what the app's POST /api/orders
calls) and measures, per order, from just before the submit to the moment the SMTP server accepted its page.

    .venv/bin/python bench/bench_urgent_page.py [N=200] [--no-prefect] [--threads T]

--no-prefect   the Prefect API is unreachable (the page must not depend on it)
--threads T    also measure T submitters at once (default 0: skip)
Target: p95 < 2 s. Prints the figures; exits 1 when the target is missed or a page is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import free_port  # noqa: E402
from tasks.adapters.processes import stop_all  # noqa: E402

TARGET_P95 = 2.0
BODY = {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal", "lock_login"],
        "patient_personal_number": "19121212-1212", "care_unit_hsa_id": "DEMO-OSTERGOTLAND-UNIT",
        "region": "ostergotland", "urgent": True, "reason": "Bänkprov", "callback_phone": "010-103 60 00"}
PATIENT_FORMS = re.compile(rb"(?:19)?121212[-+]?1212")  # the bench patient in any spelling


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))
    return ordered[int(k)]


class TimingHandler:
    """An SMTP server that notes when each order's page was accepted (monotonic clock of this process)."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self.leaks = 0
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        at = time.monotonic()
        raw = envelope.original_content or envelope.content
        ref = message_from_bytes(raw).get("X-Order-Reference", "")
        self.leaks += bool(PATIENT_FORMS.search(raw))
        with self.cond:
            self.accepted.setdefault(ref, at)
            self.cond.notify_all()
        return "250 Message accepted for delivery"

    def wait(self, ref: str, timeout: float = 60) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: ref in self.accepted, timeout)
            return self.accepted.get(ref)


def start_prefect(tmp: Path, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    import httpx

    from tasks.adapters import prefect_auth
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    procs = []
    with open(tmp / "prefect-server.log", "ab") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", port], stdout=log, stderr=log, env={
                                           **env, **prefect_auth.server_env(env["PREFECT_API_AUTH_STRING"],
                                                                            "http://127.0.0.1:8000")}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        raise SystemExit("the Prefect server did not start")
    with open(tmp / "serve.log", "ab") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=ROOT, env=env, stdout=log,
                                      stderr=log))
    return procs


def one(handler: TimingHandler) -> tuple[float, float]:
    """(submit → page accepted, submit → submit returned) in seconds."""
    from flows import commands
    t0 = time.monotonic()
    out = asyncio.run(commands.submit(BODY, "DEMO-OSTERGOTLAND-CLINICIAN"))
    returned = time.monotonic() - t0
    assert out.order is not None, out.kind
    at = handler.wait(out.order.reference)
    return (at - t0 if at is not None else float("inf")), returned


def report(name: str, page: list[float], submit: list[float]) -> bool:
    missing = sum(1 for v in page if v == float("inf"))
    ok_vals = [v for v in page if v != float("inf")]
    print(f"  {name}: n={len(page)}  page accepted p50 {pct(ok_vals, 50) * 1000:.0f} ms  "
          f"p95 {pct(ok_vals, 95) * 1000:.0f} ms  max {max(ok_vals) * 1000:.0f} ms"
          f"  (submit returned p50 {pct(submit, 50) * 1000:.0f} ms, p95 {pct(submit, 95) * 1000:.0f} ms)"
          + (f"  MISSING {missing}" if missing else ""))
    return missing == 0 and pct(ok_vals, 95) < TARGET_P95


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=200)
    ap.add_argument("--no-prefect", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ro-bench-urgent-"))
    env = {**os.environ, "RO_DATA_DIR": str(tmp / "data"), "RO_SMTP_PORT": str(free_port()),
           "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_LEVEL": "ERROR", "PREFECT_UI_ENABLED": "false",
           "PYTHONPATH": str(ROOT), "RO_HOUSEKEEPING_SECONDS": "2"}
    env.pop("DATABASE_URL", None)
    env.pop("RO_DATABASE_URL", None)
    env["PREFECT_API_URL"] = ("http://127.0.0.1:9/api" if args.no_prefect
                              else f"http://127.0.0.1:{free_port()}/api")
    if args.no_prefect:
        env["PREFECT_CLIENT_MAX_RETRIES"] = "0"
    from tasks.adapters import prefect_auth  # Prefect's API locked as on the embedded default
    env.update(prefect_auth.client_env(prefect_auth.ensure_secret(prefect_auth.secret_file(tmp / "data"))))
    os.environ.clear()
    os.environ.update(env)

    import logging

    from aiosmtpd.controller import Controller
    if args.no_prefect:  # every submit says it could not start the run; that is the point here
        logging.getLogger("tasks.steps.runs").setLevel(logging.ERROR)

    from tasks.adapters.database import migrate
    from tasks.adapters.demo import seed_demo
    migrate()
    seed_demo()
    handler = TimingHandler()
    sink = Controller(handler, hostname="127.0.0.1", port=int(env["RO_SMTP_PORT"]))
    sink.start()
    procs = [] if args.no_prefect else start_prefect(tmp, env)
    ok = True
    try:
        if procs:
            time.sleep(5)  # let the served flows register before the clock starts
        one(handler)  # warm-up: imports, first connections
        print(f"bench_urgent_page {datetime.now(UTC):%Y-%m-%d} embedded default (SQLite, local SMTP), "
              f"Prefect {'unreachable' if args.no_prefect else 'server + served flows running'}, "
              f"{os.cpu_count()} CPUs; target p95 < {TARGET_P95:.0f} s")
        seq = []
        started = time.monotonic()
        for i in range(args.n):
            seq.append(one(handler))
            if (i + 1) % 50 == 0:
                print(f"    … {i + 1} submitted in {time.monotonic() - started:.0f} s", flush=True)
        ok &= report("sequential", [a for a, _ in seq], [b for _, b in seq])
        if args.threads:
            with ThreadPoolExecutor(args.threads) as pool:
                par = list(pool.map(lambda _: one(handler), range(args.n)))
            ok &= report(f"{args.threads} at once", [a for a, _ in par], [b for _, b in par])
        if handler.leaks:
            print(f"  {handler.leaks} messages contained the patient's personal number")
            ok = False
    finally:
        stop_all(reversed(procs))
        sink.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
