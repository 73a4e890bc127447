"""Benchmark: what the audit log's hash chain costs (tasks/adapters/audit_chain.py).

1. an audited transaction: one `tasks.adapters.audit.record` row per transaction, the chain's lock, id and hash
   included, p50/p95 over 500 transactions (one writer);
2. 16 writers at once (threads), each an audited transaction after another for 10 s: transactions per
   second and p50/p95. Every audited commit holds the chain's lock through COMMIT, so they queue there;
3. `restriction-orders audit verify` on a log of N rows (default 50,000; filled 500 rows per transaction):
   the whole walk, and rows per second. The target: an hourly verification of a year's log (a few million
   rows) well within the hour, so at least 10,000 rows/s.

    .venv/bin/python bench/bench_audit_chain.py [--rows N] [--writers 16] [--seconds 10] [--postgres]

SQLite by default (a temporary file); `--postgres` makes a throwaway database on RO_BENCH_PG (production's
layout). Prints its figures; exits 1 when the verify rate misses the target.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.harness import PG_ADMIN, machine, percentile  # noqa: E402

if TYPE_CHECKING:
    from tasks.adapters.database import Database

TARGET_ROWS_PER_S = 10_000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the writers write at once")
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ro-bench-audit-"))
    name = f"ro_bench_audit_{tmp.name[-8:].lower()}"
    url = f"sqlite:///{tmp / 'orders.db'}"
    if args.postgres:
        import sqlalchemy as sa
        admin = sa.create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        url = f"{PG_ADMIN}/{name}"
    from tasks.adapters.database import Database
    db = Database(url)
    try:
        return run(db, args.rows, args.writers, args.seconds, "PostgreSQL" if args.postgres else "SQLite")
    finally:
        db.dispose()
        if args.postgres:
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def concurrent(db: Database, writers: int, seconds: float) -> None:
    import threading

    from tasks.adapters import audit
    times: list[float] = []
    stop = time.monotonic() + seconds

    def writer(name: str) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            with db.session() as s:
                audit.record(s, actor=name, action="order_read", detail={"via": "bench"})
            times.append((time.perf_counter() - t0) * 1000)
    threads = [threading.Thread(target=writer, args=(f"W{i}",)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"  {writers} writers at once, {seconds:.0f} s: {len(times) / seconds:,.0f} audited transactions/s, "
          f"p50 {percentile(times, 50):.1f} ms  p95 {percentile(times, 95):.1f} ms")


def run(db: Database, n: int, writers: int, seconds: float, kind: str) -> int:
    from sqlalchemy import func, select

    from models.tables import AuditEvent
    from tasks.adapters import audit, audit_chain
    db.migrate()
    print(f"bench_audit_chain {datetime.now(UTC):%Y-%m-%d} {kind}, {machine()}")

    times: list[float] = []
    for i in range(500):
        t0 = time.perf_counter()
        with db.session() as s:
            audit.record(s, actor="DEMO-KALMAR-SUPPORT", action="order_read", order=None,
                         detail={"via": "bench", "i": i})
        times.append((time.perf_counter() - t0) * 1000)
    print(f"  audited transaction (one row): p50 {percentile(times, 50):.1f} ms  p95 {percentile(times, 95):.1f} ms"
          f"  max {max(times):.1f} ms")

    concurrent(db, writers, seconds)

    t0 = time.perf_counter()
    with db.session() as s:
        already = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    written = already
    while written < n:
        with db.session() as s:
            for i in range(min(500, n - written)):
                audit.record(s, actor="DEMO-KALMAR-SUPPORT", action="order_read",
                             detail={"via": "bench", "i": written + i, "reference": f"RO-2026-{i:06d}"})
        written = min(n, written + 500)
    fill = time.perf_counter() - t0
    print(f"  filled to {max(n, already):,} rows, 500 per transaction: {fill:.1f} s "
          f"({max(0, n - already) / fill:,.0f} rows/s)")

    t0 = time.perf_counter()
    report = audit_chain.verify(db, by="bench")
    took = time.perf_counter() - t0
    rate = report.rows / took
    print(f"  verify {report.rows:,} rows: {took:.2f} s, {rate:,.0f} rows/s, intact: {report.ok}"
          f"  (target >= {TARGET_ROWS_PER_S:,} rows/s: {'met' if rate >= TARGET_ROWS_PER_S else 'MISSED'})")
    return 0 if report.ok and rate >= TARGET_ROWS_PER_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
