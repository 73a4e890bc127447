"""Orders waiting in human steps hold no process: memory of the serving processes with 0 and with N
(default 10,000) orders waiting for their harm assessment, the reconciler's round time over them, and
resume latency (decision stored -> the order's next status) for real orders decided while N wait.

The N waiting orders are real orders in the orders database, planned by the routine's own first step,
each with a flow run in Prefect in the Suspended state the routine leaves it in (created through
Prefect's API with the order's idempotency key, so the reconciler finds it and never starts another):
running each flow up to its suspension would take about 3 s of CPU per order here, 8 hours for 10,000.
The resumed orders are submitted normally and their runs suspend themselves.

Usage: python bench/bench_waiting.py [--postgres] [--waiting 10000] [--resumes 20]
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
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import embedded, machine, percentile, personal_number, rss_mib  # noqa: E402

rng = random.Random(10000)


def body() -> dict[str, Any]:
    return {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
            "patient_personal_number": personal_number(rng), "care_unit_hsa_id": "DEMO-KALMAR-UNIT",
            "region": "kalmar", "reason": "Hot mot patienten"}


def _store_waiting() -> str:
    from tasks.steps import orders, stages
    out = orders.submit(body(), "DEMO-KALMAR-CLINICIAN", datetime.now(UTC))
    assert out.order is not None
    ref = out.order.reference
    stages.receive.fn(ref)
    return ref


async def make_waiting(n: int) -> float:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Suspended

    from flows.order import SUSPEND_TIMEOUT_S
    from tasks.adapters.database import session
    from tasks.steps.orders import get
    t0 = time.monotonic()
    async with get_client() as client:
        dep = await client.read_deployment_by_name("seal-or-lock/seal-or-lock")
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem:
                ref = await asyncio.to_thread(_store_waiting)
                for attempt in range(8):
                    try:
                        run = await client.create_flow_run_from_deployment(
                            dep.id, parameters={"reference": ref}, idempotency_key=ref, name=ref,
                            state=Suspended(timeout_seconds=SUSPEND_TIMEOUT_S, pause_key="harm-assessment-0"),
                            tags=["type:seal_or_lock", "region:kalmar", "channel:digital"])
                        break
                    except PrefectHTTPStatusError:  # 503 from Prefect's SQLite under load: same key, try again
                        if attempt == 7:
                            raise
                        await asyncio.sleep(2 ** attempt)

                def link() -> None:
                    with session() as s:
                        get(s, ref).flow_run_id = str(run.id)
                await asyncio.to_thread(link)
        for i in range(0, n, 500):
            await asyncio.gather(*(one() for _ in range(min(500, n - i))))
            print(f"  ... {min(n, i + 500)} waiting orders made ({time.monotonic() - t0:.0f} s)", flush=True)
    return time.monotonic() - t0


async def resume_latency(count: int) -> list[float]:
    from prefect.client.orchestration import get_client

    from flows import commands
    from tasks.adapters.database import session
    from tasks.steps import orders
    refs = [(await commands.submit(body(), "DEMO-KALMAR-CLINICIAN")).order.reference  # type: ignore[union-attr]
            for _ in range(count)]

    async def suspended(ref: str) -> bool:
        with session() as s:
            run_id = orders.get(s, ref).flow_run_id
        if not run_id:
            return False
        async with get_client() as c:
            fr = await c.read_flow_run(UUID(run_id))
        return bool(fr.state and fr.state.is_paused())
    deadline = time.monotonic() + 900
    for ref in refs:
        while not await suspended(ref) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    lat: list[float] = []
    for ref in refs:
        t1 = time.monotonic()
        await commands.decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        while True:
            with session() as s:
                if orders.get(s, ref).status == "awaiting_approval":
                    break
            await asyncio.sleep(0.05)
        lat.append(time.monotonic() - t1)
        await asyncio.sleep(1)  # people decide one at a time, not in a burst
    return lat


def tree(env: dict[str, Any]) -> tuple[float, float]:
    return rss_mib(env["serve"].pid), rss_mib(env["prefect"].pid)


def main(waiting: int, resumes: int, postgres: bool) -> None:
    with embedded(postgres=postgres) as env:
        # Imported only now: Prefect reads PREFECT_API_URL once, on import, and embedded() sets it.
        from tasks.steps.runs import reconcile
        time.sleep(5)
        serve0, prefect0 = tree(env)
        t = time.monotonic()
        asyncio.run(reconcile())
        round0 = time.monotonic() - t
        made = asyncio.run(make_waiting(waiting))
        time.sleep(30)  # housekeeping rounds over the waiting orders
        serve1, prefect1 = tree(env)
        t = time.monotonic()
        counts = asyncio.run(reconcile())
        round1 = time.monotonic() - t
        lat = asyncio.run(resume_latency(resumes))
        serve2, prefect2 = tree(env)
    print(f"bench_waiting {datetime.now(UTC):%Y-%m-%d} {env['db']}; {machine()}")
    print(f"  {waiting} orders waiting for harm assessment (made in {made:.0f} s)")
    print(f"  serving process tree RSS: {serve0:.0f} MiB with none waiting, {serve1:.0f} MiB with {waiting} "
          f"({(serve1 - serve0) / waiting * 1024:.2f} KiB per waiting order), {serve2:.0f} MiB after the resumes")
    print(f"  Prefect server RSS: {prefect0:.0f} -> {prefect1:.0f} -> {prefect2:.0f} MiB")
    print(f"  reconciler round: {round0 * 1000:.0f} ms with none waiting, {round1 * 1000:.0f} ms with {waiting} "
          f"({counts})")
    print(f"  resume (decision -> next status), {resumes} orders decided one by one while {waiting} wait: "
          f"p50 {percentile(lat, 50):.1f} s, p95 {percentile(lat, 95):.1f} s, max {max(lat):.1f} s (target p95 < 5 s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--waiting", type=int, default=10000)
    ap.add_argument("--resumes", type=int, default=20)
    a = ap.parse_args()
    main(a.waiting, a.resumes, a.postgres)
