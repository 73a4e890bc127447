"""Demo data for issue 14's statistics: orders through the real routine (in-process engine, simulated 1177
registry) on a fixed clock, in Region Kalmar, over three weeks of November 2026; then the statistics.

Run: `.venv/bin/python -m tests.demo_statistics` (a throwaway SQLite database; no Prefect, no SMTP needed)."""
from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from flows import commands
from flows.bootstrap import in_process
from models.clock import STOCKHOLM, FixedClock
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import statistics as st
from tests.conftest import migrated
from tests.webapp import body

CL, AS, HEAD, ONCALL = "DEMO-KALMAR-CLINICIAN", "DEMO-KALMAR-ASSESSOR", "DEMO-KALMAR-HEAD", "DEMO-KALMAR-ONCALL"
ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 365}


async def order(ad: Adapters, clock: FixedClock, start: datetime, kind: str = "seal_or_lock", *,
                urgent: bool = False, steps: tuple[tuple[int, str, Any, Any], ...] = ()) -> str:
    clock.set(start)
    raw = body(kind, urgent=urgent, **({"callback_phone": "070-123 45 67"} if urgent else {}))
    out = await commands.submit(ad, raw, CL)
    assert out.kind == "created" and out.order is not None, (out.kind, out.check)
    ref = out.order.reference
    for minutes, stage, who, b in steps:
        clock.advance(minutes=minutes)
        if stage == "escalate":
            from tasks.steps.escalation import escalate_due
            escalate_due(ad, clock.now(), references=[ref])
            continue
        await commands.decide(ad, ref, stage, who, b)
    return ref


def d(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=STOCKHOLM)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    db = migrated(Database(f"sqlite:///{tmp / 'orders.db'}"))
    clock = FixedClock(d(2, 8))
    ad = in_process(Settings(data_dir=tmp, smtp_port=1, demo=True), db=db, clock=clock)
    A, Y, N = (AS, ASSESS), {"approved": True, "comment": ""}, {"approved": False, "comment": "Ej styrkt"}
    no_harm = {"harm_found": False, "decision": "do_not_restrict", "rationale": "Ingen risk för men"}
    await order(ad, clock, d(2, 9), steps=((45, "harm_assessment", *A), (90, "approval", HEAD, Y)))
    await order(ad, clock, d(2, 13), "block_guardian", steps=((120, "harm_assessment", *A), (60, "approval", HEAD, Y)))
    await order(ad, clock, d(3, 10), urgent=True, steps=((12, "callback", ONCALL, {"note": "Ringt"}),
                                                         (30, "harm_assessment", *A), (40, "approval", HEAD, Y)))
    await order(ad, clock, d(4, 15, 30), steps=((20 * 60, "harm_assessment", *A), (5 * 60, "approval", HEAD, Y)))
    await order(ad, clock, d(9, 8, 30), "minor_access", steps=((60, "harm_assessment", *A), (30, "approval", HEAD, N)))
    await order(ad, clock, d(10, 11), steps=((30, "harm_assessment", AS, no_harm),))
    await order(ad, clock, d(11, 14), urgent=True, steps=(
        (35, "escalate", None, None), (6, "callback", ONCALL, {"note": "Sent"}), (25, "harm_assessment", *A),
        (35, "approval", HEAD, Y)))
    await order(ad, clock, d(16, 9), steps=((3 * 24 * 60, "harm_assessment", *A), (60, "approval", HEAD, Y)))
    await order(ad, clock, d(17, 10), "block_guardian", steps=((90, "harm_assessment", *A),))
    await order(ad, clock, d(18, 8))
    clock.set(d(30, 12))
    with ad.db.session() as s:
        figures = st.period_statistics(s, clock.now(), "kalmar", d(1, 0), d(30, 23))
    print(json.dumps(figures, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
