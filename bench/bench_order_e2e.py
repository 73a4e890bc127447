"""Completed orders per minute, end to end, with the two human decisions made by a script as soon as each
order waits for them (so the figure is the system's own capacity, not people's reaction time).

Each of C workers submits an order through the service layer (what POST /api/orders calls), makes the
harm assessment and the approval when the order reaches them, waits for `completed` (the 1177 change made
by the simulated registry, both confirmation emails queued), and starts the next. Runs for S seconds after
one warm-up order; orders still open at the end are not counted.

Usage: python bench/bench_order_e2e.py [--postgres] [--seconds 120] [--concurrency 6]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import embedded, machine, percentile, personal_number  # noqa: E402

NEXT = {"awaiting_assessment": ("harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"}),
        "awaiting_approval": ("approval", "DEMO-KALMAR-HEAD", {"approved": True})}
rng = random.Random(8)


def body() -> dict[str, Any]:
    return {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal", "lock_login"],
            "patient_personal_number": personal_number(rng), "care_unit_hsa_id": "DEMO-KALMAR-UNIT",
            "region": "kalmar", "reason": "Hot mot patienten"}


async def one(stop_at: float) -> float | None:
    from flows import commands
    from tasks.adapters.database import session
    from tasks.steps import orders
    t0 = time.monotonic()
    out = await commands.submit(body(), "DEMO-KALMAR-CLINICIAN")
    assert out.order is not None
    ref = out.order.reference
    decided: set[str] = set()
    while time.monotonic() < stop_at:
        with session() as s:
            st = orders.get(s, ref).status
        if st == "completed":
            return time.monotonic() - t0
        if st in NEXT and st not in decided:
            stage, actor, decision = NEXT[st]
            try:
                await commands.decide(ref, stage, actor, decision)
                decided.add(st)
            except orders.Conflict:
                pass
        await asyncio.sleep(0.1)
    return None


async def worker(stop_at: float, done: list[float]) -> None:
    while time.monotonic() < stop_at:
        took = await one(stop_at)
        if took is not None:
            done.append(took)


async def main(seconds: int, concurrency: int, db: str) -> None:
    warm = await one(time.monotonic() + 180)
    done: list[float] = []
    t0 = time.monotonic()
    await asyncio.gather(*(worker(t0 + seconds, done) for _ in range(concurrency)))
    wall = time.monotonic() - t0
    print(f"bench_order_e2e {datetime.now(UTC):%Y-%m-%d} {db}; {machine()}")
    print(f"  warm-up order: {warm:.1f} s" if warm else "  warm-up order did not complete")
    if done:
        print(f"  {concurrency} orders in flight for {wall:.0f} s: {len(done)} completed -> "
              f"{len(done) / wall * 60:.1f} completed orders/min; submit -> completed "
              f"p50 {percentile(done, 50):.1f} s, p95 {percentile(done, 95):.1f} s, max {max(done):.1f} s")
    else:
        print("  no order completed in the window")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--concurrency", type=int, default=6)
    args = ap.parse_args()
    with embedded(postgres=args.postgres) as env:
        asyncio.run(main(args.seconds, args.concurrency, str(env["db"])))
