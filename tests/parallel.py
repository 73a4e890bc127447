"""`make pytest`: the suite as N pytest sessions at once (RO_TEST_PROCESSES, default 2), each a whole session of
its own: its own orders database (SQLite file or PostgreSQL schema), Prefect server, served flows, SMTP sink and
temporary directory (tests/conftest.py makes each of them per session, on free ports). Much of the suite
waits on subprocesses, servers and deadlines rather than computing, so two sessions on two cores take far
less than twice the time of one.

The test files are dealt out by their measured duration (longest first, each to the least loaded session);
the checks that close a session (tests/test_zz_*.py: the audit chain is unbroken, no personal numbers
outside the orders database) run at the end of every session, over what that session did. Each session's
output goes to tests/artifacts/pytest-<n>.log and is printed when all are done. Arguments are passed to
every session; with explicit test paths, or with RO_TEST_PROCESSES=1, it is plain pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
ARTIFACTS = TESTS / "artifacts"
CLOSING = sorted(p.name for p in TESTS.glob("test_zz_*.py"))

# Seconds per file (SQLite, 2 cores, two sessions on a loaded machine: relative weights), from `--durations=0`;
# a file not listed counts DEFAULT_SECONDS per test function.
SECONDS: dict[str, float] = {
    "test_flows_e2e.py": 547, "test_faults_e2e.py": 497, "test_fallback_e2e.py": 228, "test_api.py": 186,
    "test_hostile_input.py": 141, "test_pages.py": 136, "test_audit_chain.py": 132,
    "test_prefect_auth.py": 123, "test_warm_worker.py": 115, "test_runs_e2e.py": 105,
    "test_directory_import_e2e.py": 79, "test_urgent_e2e.py": 70, "test_ops_e2e.py": 60, "test_paper.py": 44,
    "test_urgent.py": 44, "test_deploy_e2e.py": 33, "test_paper_orders.py": 31, "test_sla.py": 16,
    "test_faults.py": 11, "test_admin.py": 11, "test_review.py": 6, "test_architecture.py": 5,
    "test_order_life.py": 5, "test_coverage.py": 4, "test_queues.py": 4, "test_persistence.py": 4,
    "test_migration_0003r.py": 3, "test_restarts.py": 3, "test_audit_extract.py": 3,
    "test_directory_import.py": 2, "test_start_run_race.py": 2, "test_reconcile.py": 2,
}
DEFAULT_SECONDS = 1.0


def weight(path: Path) -> float:
    if path.name in SECONDS:
        return SECONDS[path.name]
    return DEFAULT_SECONDS * max(1, path.read_text(errors="replace").count("\ndef test_"))


def deal(files: list[Path], n: int) -> list[list[Path]]:
    groups: list[list[Path]] = [[] for _ in range(n)]
    load = [0.0] * n
    for f in sorted(files, key=lambda p: (-weight(p), p.name)):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += weight(f)
    return [sorted(g) for g in groups if g]


def main(args: list[str]) -> int:
    n = int(os.environ.get("RO_TEST_PROCESSES", "2"))
    explicit = [a for a in args if not a.startswith("-") and (a.startswith("tests") or a.endswith(".py"))]
    if n <= 1 or explicit:
        return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=ROOT)
    files = [p for p in sorted(TESTS.glob("test_*.py")) if p.name not in CLOSING]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    for i, group in enumerate(deal(files, n), 1):
        log = ARTIFACTS / f"pytest-{i}.log"
        paths = [str(p.relative_to(ROOT)) for p in group] + [f"tests/{c}" for c in CLOSING]
        print(f"session {i}: {len(group)} files, ~{sum(weight(p) for p in group):.0f} s -> {log.relative_to(ROOT)}",
              flush=True)
        with open(log, "wb") as out:
            # PYTHONFAULTHANDLER: a crash after pytest's own handler is gone (at exit) still says where.
            proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, *paths],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        running.append((i, proc, log))
    codes: dict[int, int] = {}
    while len(codes) < len(running):
        for i, proc, _ in running:
            if i not in codes and proc.poll() is not None:
                codes[i] = proc.returncode
                print(f"session {i} finished after {time.monotonic() - started:.0f} s: exit {proc.returncode}",
                      flush=True)
        time.sleep(1)
    for i, _, log in running:
        print(f"\n{'=' * 30} session {i} ({log.relative_to(ROOT)}) {'=' * 30}", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
    failed = {i: c for i, c in codes.items() if c != 0}
    print(f"\n{len(running)} sessions in {time.monotonic() - started:.0f} s; "
          + (f"FAILED: {failed}" if failed else "all passed"), flush=True)
    return 1 if failed else 0  # a session killed by a signal has a negative code: a failure too


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
