"""How the routine performs over a period: lead times, service levels and volumes, for the region's follow-up
(the guideline asks heads of department to follow up that orders are answered within one working day).

Pure computation over `OrderRecord`s (tasks/steps/statistics.py reads them from the database). No personal
data goes in: references, types, times and outcomes only, so every figure can be exported as it is.

Definitions (the page and the API say the same):
- lead time of a stage: from the moment the order entered the stage (submission, or the previous stage's
  decision) to the stage's decision; execution from approval to execution; `submit_to_completed` from
  submission to completion (completed orders only). Median and 90th percentile (nearest rank), in minutes.
- `answered_within_one_working_day`: of the orders that got their answer (completed or rejected), the share
  answered by their due time (one working day after submission for a normal order: models/calendar.py).
- `callbacks_within_window`: of the urgent orders whose callback is recorded or whose window has passed, the
  share called back by the callback deadline (the region's window: models/regions.toml).
- `escalations`: missed callbacks escalated (deviations `callback_missed`).
- `overdue`: orders answered after their due time, or still open past it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models.calendar import local

STAGES = ("callback", "harm_assessment", "approval", "execution")
ANSWERED = frozenset({"completed", "rejected"})
FINAL = frozenset({"completed", "rejected", "cancelled", "failed"})


@dataclass(frozen=True)
class OrderRecord:
    """One order as the statistics need it."""
    reference: str
    order_type: str
    initiative: str
    region: str
    urgent: bool
    status: str
    created_at: datetime
    due_at: datetime | None = None
    final_at: datetime | None = None            # when it reached its final status
    callback_due_at: datetime | None = None
    callback_at: datetime | None = None
    decided: dict[str, datetime] = field(default_factory=dict)  # stage -> when its decision was accepted
    escalated: bool = False


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (p in 0..100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    """The median (the mean of the two middle values for an even count); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(minutes: Sequence[float]) -> dict[str, Any]:
    med, p90 = median(minutes), percentile(minutes, 90)
    return {"n": len(minutes), "median_minutes": None if med is None else round(med, 1),
            "p90_minutes": None if p90 is None else round(p90, 1)}


def _minutes(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 60


def stage_durations(o: OrderRecord) -> dict[str, float]:
    """Each decided stage's lead time in minutes. The callback runs beside the order from submission; the
    other stages follow one another, each from the previous decision (or submission)."""
    out: dict[str, float] = {}
    if "callback" in o.decided:
        out["callback"] = _minutes(o.created_at, o.decided["callback"])
    entered = o.decided.get("callback", o.created_at)
    for stage in ("harm_assessment", "approval", "execution"):
        at = o.decided.get(stage)
        if at is None:
            continue
        out[stage] = _minutes(entered, at)
        entered = at
    return out


def lead_time(records: Iterable[OrderRecord]) -> dict[str, Any]:
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    total: list[float] = []
    for o in records:
        for stage, minutes in stage_durations(o).items():
            per_stage[stage].append(minutes)
        if o.status == "completed" and o.final_at is not None:
            total.append(_minutes(o.created_at, o.final_at))
    return {"stages": {s: summary(v) for s, v in per_stage.items()}, "submit_to_completed": summary(total)}


def _share(hits: int, n: int) -> dict[str, Any]:
    return {"n": n, "met": hits, "share": round(hits / n, 3) if n else None}


def is_overdue(o: OrderRecord, now: datetime) -> bool:
    """Answered after its due time, or still open past it (a cancelled or failed order is never late)."""
    if o.due_at is None or o.status in ("cancelled", "failed"):
        return False
    if o.status in FINAL:
        return o.final_at is not None and o.final_at > o.due_at
    return now > o.due_at


def _answered_in_time(records: Sequence[OrderRecord]) -> dict[str, Any]:
    answered = [(o.final_at, o.due_at) for o in records if o.status in ANSWERED]
    timed = [(final, due) for final, due in answered if final is not None and due is not None]
    return _share(sum(1 for final, due in timed if final <= due), len(timed))


def _callbacks_in_window(records: Sequence[OrderRecord], now: datetime) -> dict[str, Any]:
    """Urgent orders whose callback is recorded or whose window has passed (a running one is not counted)."""
    calls = [(o.callback_at, o.callback_due_at) for o in records if o.urgent and o.callback_due_at is not None]
    decided = [(at, due) for at, due in calls if due is not None and (at is not None or now > due)]
    return _share(sum(1 for at, due in decided if at is not None and at <= due), len(decided))


def sla(records: Sequence[OrderRecord], now: datetime) -> dict[str, Any]:
    return {"answered_within_one_working_day": _answered_in_time(records),
            "callbacks_within_window": _callbacks_in_window(records, now),
            "escalations": sum(1 for o in records if o.escalated),
            "overdue": sum(1 for o in records if is_overdue(o, now))}


def iso_week(at: datetime) -> str:
    y, w, _ = local(at).isocalendar()
    return f"{y}-V{w:02d}"


def volume(records: Sequence[OrderRecord]) -> dict[str, Any]:
    weeks = Counter(iso_week(o.created_at) for o in records)
    return {"total": len(records),
            "by_type": dict(sorted(Counter(o.order_type for o in records).items())),
            "by_initiative": dict(sorted(Counter(o.initiative for o in records).items())),
            "urgent": sum(1 for o in records if o.urgent),
            "by_week": dict(sorted(weeks.items()))}


def statistics(records: Sequence[OrderRecord], now: datetime) -> dict[str, Any]:
    """`lead_time`, `sla` and `volume` of the orders submitted in a period."""
    return {"lead_time": lead_time(records), "sla": sla(records, now), "volume": volume(records)}


def csv_rows(stats: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The figures as (section, measure, value) rows for a CSV export: no reference, no personal number."""
    rows: list[tuple[str, str, str]] = []
    for stage, s in stats["lead_time"]["stages"].items():
        for k, v in s.items():
            rows.append(("lead_time", f"{stage}.{k}", "" if v is None else str(v)))
    for k, v in stats["lead_time"]["submit_to_completed"].items():
        rows.append(("lead_time", f"submit_to_completed.{k}", "" if v is None else str(v)))
    for name, value in stats["sla"].items():
        if isinstance(value, dict):
            for k, v in value.items():
                rows.append(("sla", f"{name}.{k}", "" if v is None else str(v)))
        else:
            rows.append(("sla", name, str(value)))
    vol = stats["volume"]
    rows += [("volume", "total", str(vol["total"])), ("volume", "urgent", str(vol["urgent"]))]
    for group in ("by_type", "by_initiative", "by_week"):
        rows += [("volume", f"{group}.{k}", str(v)) for k, v in vol[group].items()]
    return rows
