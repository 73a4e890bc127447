"""How long one complete order takes end to end on the embedded default, and completed orders per minute
with decisions made by a script as soon as each order waits for them.

Prints: per-order latency (submit → completed, excluding the decision makers' own reaction time is not
possible: the script decides as soon as it sees the status) and throughput.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.harness import embedded, percentile  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
BODY = {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
        "patient_personal_number": "19121212-1212", "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar"}
NEXT = {"awaiting_assessment": ("harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"}),
        "awaiting_approval": ("approval", "DEMO-KALMAR-HEAD", {"approved": True})}


async def one(commands, orders, session) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = await commands.submit(BODY, "DEMO-KALMAR-CLINICIAN")
    ref = out.order.reference
    decided: set[str] = set()
    while True:
        with session() as s:
            st = orders.get(s, ref).status
        if st == "completed":
            return time.monotonic() - t0
        if st in NEXT and st not in decided:
            stage, actor, body = NEXT[st]
            try:
                await commands.decide(ref, stage, actor, body)
                decided.add(st)
            except orders.Conflict:
                pass
        await asyncio.sleep(0.05)


async def main() -> None:
    from flows import commands
    from tasks import orders
    from tasks.database import session
    await one(commands, orders, session)  # warm-up: first subprocess imports
    seq = [await one(commands, orders, session) for _ in range(N)]
    t0 = time.monotonic()
    par = await asyncio.gather(*(one(commands, orders, session) for _ in range(N)))
    wall = time.monotonic() - t0
    print(f"bench_order_e2e {datetime.now(UTC):%Y-%m-%d} embedded default (SQLite), N={N}")
    print(f"  sequential: p50 {percentile(seq, 50):.1f} s  p95 {percentile(seq, 95):.1f} s  max {max(seq):.1f} s per order")
    print(f"  {N} concurrent: wall {wall:.1f} s -> {N / wall * 60:.1f} completed orders/min; "
          f"p50 {percentile(par, 50):.1f} s  max {max(par):.1f} s")


if __name__ == "__main__":
    with embedded():
        asyncio.run(main())
