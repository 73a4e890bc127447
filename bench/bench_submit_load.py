"""50 clinicians submitting orders at once for 60 seconds against the running system: latency of
POST /api/orders (p50/p95/p99) and errors. Target: p95 under 200 ms, zero errors.

The whole embedded system runs beside the load (Prefect server, served flows starting and running every
submitted order, SMTP sink), the app in its own uvicorn process; the load comes from this process over
loopback. Each clinician submits, then thinks for `--think` seconds (uniform ±50 %) before the next one;
every order is a new, valid one (a made-up patient with a valid check digit).

`--workers-elsewhere`: production's layout, where the flow runs execute on workers on other machines: the
app, its database and the Prefect server run here (each submit still creates its flow run), the served
flows do not. On two cores the whole embedded system cannot keep up with 50 clinicians: each order's
run is a Python process of about 3 s CPU, so 12 orders a second need far more than two cores, and the
clinicians' latency then measures the flow runs' CPU, not the app.

Usage: python bench/bench_submit_load.py [--postgres] [--workers-elsewhere] [--clinicians 50] [--seconds 60]
       [--think 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import embedded, machine, percentile, personal_number, rss_mib  # noqa: E402

rng = random.Random(50)


async def clinician(c: httpx.AsyncClient, stop_at: float, think: float, lat: list[float],
                    errors: dict[str, int]) -> None:
    while time.monotonic() < stop_at:
        body = {"order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
                "patient_personal_number": personal_number(rng), "care_unit_hsa_id": "DEMO-KALMAR-UNIT",
                "region": "kalmar", "reason": "Hot mot patienten"}
        t0 = time.perf_counter()
        try:
            r = await c.post("/api/orders", json=body)
            took = time.perf_counter() - t0
            if r.status_code == 201:
                lat.append(took)
            else:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        await asyncio.sleep(think * rng.uniform(0.5, 1.5))


async def main(base: str, clinicians: int, seconds: int, think: float) -> tuple[list[float], dict[str, int], float]:
    limits = httpx.Limits(max_connections=clinicians, max_keepalive_connections=clinicians)
    async with httpx.AsyncClient(base_url=base, headers={"X-Remote-User": "DEMO-KALMAR-CLINICIAN"},
                                 timeout=30, limits=limits) as c:
        for _ in range(3):  # warm-up: first imports, first connections
            await c.post("/api/orders/validate", json={})
        lat: list[float] = []
        errors: dict[str, int] = {}
        t0 = time.monotonic()
        await asyncio.gather(*(clinician(c, t0 + seconds, think, lat, errors) for _ in range(clinicians)))
        return lat, errors, time.monotonic() - t0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--clinicians", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--think", type=float, default=1.0)
    ap.add_argument("--workers-elsewhere", action="store_true")
    args = ap.parse_args()
    with embedded(app=True, postgres=args.postgres, serve=not args.workers_elsewhere) as env:
        app_pid = env["app"].pid  # type: ignore[attr-defined]
        rss_before = rss_mib(app_pid)
        lat, errors, wall = asyncio.run(main(str(env["base"]), args.clinicians, args.seconds, args.think))
        rss_after = rss_mib(app_pid)
    ms = [x * 1000 for x in lat]
    layout = "flow runs on workers elsewhere" if args.workers_elsewhere else "flow runs on this machine too"
    print(f"bench_submit_load {datetime.now(UTC):%Y-%m-%d} {env['db']}, {layout}; {machine()}")
    print(f"  {args.clinicians} clinicians, think {args.think:.1f} s, {wall:.0f} s: {len(lat)} orders stored "
          f"({len(lat) / wall:.1f}/s), errors {sum(errors.values())} {errors or ''}")
    if ms:
        print(f"  POST /api/orders p50 {percentile(ms, 50):.0f} ms, p95 {percentile(ms, 95):.0f} ms, "
              f"p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms (target p95 < 200 ms, zero errors)")
    print(f"  app process RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
