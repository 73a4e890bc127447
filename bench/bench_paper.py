"""Benchmark: render 100 pre-filled paper forms (all four types, mixed options) to PDF.

Prints p50/p95/max render time and the average file size; the target is p95 < 250 ms per form, the
time a clinician waits after pressing "Skriv ut". The first render (template compile, font loading)
is timed separately and kept out of the figures. `--strict` exits 1 when the target is missed.

    .venv/bin/python bench/bench_paper.py [--strict]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from models.personnummer import luhn_check_digit  # noqa: E402
from tasks.adapters.paper import ORDER_TYPES, PaperOrder, PaperRegion, render_pdf  # noqa: E402

# A guardian number made here (valid check digit), never one copied from anywhere.
GUARDIAN = f"19800101-123{luhn_check_digit('800101123')}"

N = 100
TARGET_P95_MS = 250.0
REGION = PaperRegion(code="kalmar", name="Region Kalmar län", support_phone="0480-840 38", support_option="2",
                     postal_route=["Regionstab Kansli", "Strömgatan", "Kalmar"], on_call_window="17:00–07:00",
                     callback_minutes=30)
BASE = PaperOrder(
    reference="RO-2026-000000", order_type="seal_or_lock", initiative="care", actions=["seal_journal"],
    patient_personal_number="19121212-1212", patient_name="Tolvan Tolvansson", patient_protected_identity=False,
    guardian_personal_number=None, minor_access_grant=None, minor_access_recipient=None, child_consent=None,
    identity_checked_in_person=False, urgent=False, reason="Hot mot patienten.", care_unit_hsa_id="SE2321000032-1003",
    care_unit_name="Psykiatrimottagningen Kalmar", orderer_name="Anna Andersson", orderer_hsa_id="SE2321000032-AB12",
    created_at="2026-11-21 14:05", needs_head_signature=True)


def order(i: int) -> PaperOrder:
    """The i-th order: cycles through the types, urgency, actions and reason lengths (up to 2000 chars)."""
    order_type = ORDER_TYPES[i % len(ORDER_TYPES)]
    o = replace(BASE, reference=f"RO-2026-{i:06d}", order_type=order_type, urgent=i % 3 == 0,
                reason=("Motivering enligt menprövning. " * (1 + i % 7 * 9))[:2000])
    if order_type == "restore_access":
        return replace(o, initiative="patient", actions=["seal_journal", "lock_login"][: 1 + i % 2],
                       identity_checked_in_person=True, needs_head_signature=False)
    if order_type in ("block_guardian", "minor_access"):
        o = replace(o, actions=[], guardian_personal_number=GUARDIAN)
    if order_type == "minor_access":
        o = replace(o, minor_access_grant=i % 2 == 0, minor_access_recipient="guardian", child_consent=True)
    return o


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    render_pdf("seal_or_lock", REGION, BASE)
    cold_ms = (time.perf_counter() - t0) * 1000

    times: list[float] = []
    sizes: list[int] = []
    for i in range(N):
        o = order(i)
        t0 = time.perf_counter()
        pdf = render_pdf(o.order_type, REGION, o)
        times.append((time.perf_counter() - t0) * 1000)
        sizes.append(len(pdf))

    times.sort()
    p50 = statistics.median(times)
    p95 = times[round(0.95 * N) - 1]  # nearest-rank percentile
    met = p95 < TARGET_P95_MS
    print(f"paper forms: {N} pre-filled PDFs ({', '.join(ORDER_TYPES)}), first (cold) render {cold_ms:.0f} ms")
    print(f"  p50 {p50:.0f} ms   p95 {p95:.0f} ms   max {times[-1]:.0f} ms   "
          f"average size {statistics.mean(sizes) / 1024:.1f} KiB")
    print(f"  target p95 < {TARGET_P95_MS:.0f} ms: {'met' if met else 'MISSED'}")
    return 1 if "--strict" in argv and not met else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
