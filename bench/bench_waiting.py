"""Orders waiting in a human step hold no process: memory of the serving process before and after N orders
are suspended, and resume latency (decision stored → the order's next status) for a sample of them.

Usage: python bench/bench_waiting.py [N] [RESUMES]
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import embedded, percentile, rss_mib  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
RESUMES = int(sys.argv[2]) if len(sys.argv) > 2 else 20
BODY = {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
        "patient_personal_number": "19121212-1212", "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar"}


def count(status: str) -> int:
    from sqlalchemy import func, select

    from models.tables import Order
    from tasks.database import session
    with session() as s:
        return int(s.scalar(select(func.count()).select_from(Order).where(Order.status == status)) or 0)


async def suspended_runs() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    async with get_client() as c:
        runs = await c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PAUSED]))), limit=N + 10)
    return len(runs)


async def main(serve_pid: int) -> None:
    from flows import commands
    from tasks import orders
    from tasks.database import session
    time.sleep(3)
    before = rss_mib(serve_pid)
    t0 = time.monotonic()
    refs = []
    for _ in range(N):
        refs.append((await commands.submit(BODY, "DEMO-KALMAR-CLINICIAN")).order.reference)  # type: ignore[union-attr]
    while await suspended_runs() < N and time.monotonic() - t0 < 1800:
        await asyncio.sleep(2)
    settle = time.monotonic() - t0
    time.sleep(5)
    after = rss_mib(serve_pid)
    lat = []
    for ref in refs[:RESUMES]:
        t1 = time.monotonic()
        await commands.decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        while True:
            with session() as s:
                if orders.get(s, ref).status == "awaiting_approval":
                    break
            await asyncio.sleep(0.05)
        lat.append(time.monotonic() - t1)
    print(f"bench_waiting {datetime.now(UTC):%Y-%m-%d} embedded default (SQLite), N={N}")
    print(f"  {N} orders suspended in {settle:.0f} s; serving process tree RSS {before:.0f} MiB before, "
          f"{after:.0f} MiB with {N} waiting ({(after - before) / N * 1024:.0f} KiB per waiting order)")
    print(f"  resume (decision -> next status), {RESUMES} orders: p50 {percentile(lat, 50):.1f} s  "
          f"p95 {percentile(lat, 95):.1f} s  max {max(lat):.1f} s")


if __name__ == "__main__":
    with embedded() as sys_:
        asyncio.run(main(sys_["serve"].pid))  # type: ignore[union-attr]
