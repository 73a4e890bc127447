"""The statistics' reading half: the orders submitted in a period (and region) as `models.statistics`
records, read in a few queries (orders, their accepted decisions, their final audit rows, their escalations).
The figures themselves are models/statistics.py. Nothing personal is read: no personal number, no free text.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.statistics import FINAL, OrderRecord, statistics
from models.tables import AuditEvent, Decision, Deviation, Order
from tasks.steps.escalation import DEVIATION_KIND

CHUNK = 500  # references per IN (…) list


def _chunks(refs: list[str]) -> list[list[str]]:
    return [refs[i:i + CHUNK] for i in range(0, len(refs), CHUNK)]


def _orders(s: Session, region: str | None, start: datetime | None, end: datetime | None) -> list[Any]:
    q = select(Order.id, Order.reference, Order.order_type, Order.initiative, Order.region, Order.urgent,
               Order.status, Order.created_at, Order.due_at, Order.callback_due_at, Order.callback_at)
    if region:
        q = q.where(Order.region == region)
    if start is not None:
        q = q.where(Order.created_at >= start)
    if end is not None:
        q = q.where(Order.created_at < end)
    return list(s.execute(q.order_by(Order.created_at, Order.id)))


def _decided(s: Session, ids: list[int]) -> dict[int, dict[str, datetime]]:
    out: dict[int, dict[str, datetime]] = defaultdict(dict)
    for i in range(0, len(ids), CHUNK):
        rows = s.execute(select(Decision.order_id, Decision.stage, Decision.created_at)
                         .where(Decision.order_id.in_(ids[i:i + CHUNK]), Decision.state == "accepted")
                         .order_by(Decision.id))
        for order_id, stage, at in rows:
            out[order_id].setdefault(stage, at)
    return out


def _audit_times(s: Session, refs: list[str]) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """(when each order reached its final status, when the gateway executed it)."""
    final: dict[str, datetime] = {}
    executed: dict[str, datetime] = {}
    for part in _chunks(refs):
        rows = s.execute(select(AuditEvent.order_reference, AuditEvent.action, AuditEvent.to_status, AuditEvent.at)
                         .where(AuditEvent.order_reference.in_(part),
                                (AuditEvent.to_status.in_(sorted(FINAL))) | (AuditEvent.action == "executed"))
                         .order_by(AuditEvent.seq))
        for ref, action, to_status, at in rows:
            if ref is None:
                continue
            if to_status in FINAL:
                final.setdefault(ref, at)
            if action == "executed":
                executed.setdefault(ref, at)
    return final, executed


def _escalated(s: Session, refs: list[str]) -> set[str]:
    out: set[str] = set()
    for part in _chunks(refs):
        out |= set(s.scalars(select(Deviation.order_reference).where(Deviation.order_reference.in_(part),
                                                                     Deviation.kind == DEVIATION_KIND)))
    return out


def records(s: Session, region: str | None = None, start: datetime | None = None,
            end: datetime | None = None) -> list[OrderRecord]:
    """The orders submitted in [start, end) (and `region`), as the statistics need them."""
    rows = _orders(s, region, start, end)
    refs = [r.reference for r in rows]
    decided = _decided(s, [r.id for r in rows])
    final, executed = _audit_times(s, refs)
    escalated = _escalated(s, refs)
    out = []
    for r in rows:
        stages = dict(decided.get(r.id, {}))
        if "execution" not in stages and r.reference in executed:
            stages["execution"] = executed[r.reference]  # by the gateway, without a person's decision
        callback_at = min((t for t in (r.callback_at, stages.get("callback")) if t is not None), default=None)
        out.append(OrderRecord(r.reference, r.order_type, r.initiative, r.region, bool(r.urgent), r.status,
                               r.created_at, r.due_at, final.get(r.reference), r.callback_due_at, callback_at,
                               stages, r.reference in escalated))
    return out


def period_statistics(s: Session, now: datetime, region: str | None = None, start: datetime | None = None,
                      end: datetime | None = None) -> dict[str, Any]:
    return statistics(records(s, region, start, end), now)
