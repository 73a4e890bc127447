"""The administrators' order search: by reference (a whole one or a part of it), region, status, urgent and
overdue, all in SQL, newest first, with the total before the limit. Never by personal number (that search
is the audited log extract, tasks/steps/audit_extract.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, not_, select
from sqlalchemy.orm import Session

from models.tables import Order
from tasks.steps.monitoring import OPEN_STATUSES


@dataclass(frozen=True)
class OrderSearch:
    q: str | None = None            # a reference or part of one, upper case, [A-Z0-9-] only
    region: str | None = None
    status: str | None = None
    urgent: bool | None = None
    overdue: bool | None = None


def _where(query: Any, f: OrderSearch, now: datetime) -> Any:
    if f.q:
        query = query.where(Order.reference.contains(f.q, autoescape=True))
    if f.region:
        query = query.where(Order.region == f.region)
    if f.status:
        query = query.where(Order.status == f.status)
    if f.urgent is not None:
        query = query.where(Order.urgent.is_(f.urgent))
    if f.overdue is not None:
        # models.sla.is_overdue in SQL; a NULL due time makes the conjunction false, never unknown.
        late = and_(Order.due_at.is_not(None), Order.due_at < now, Order.status.in_(OPEN_STATUSES))
        query = query.where(late if f.overdue else not_(late))
    return query


def search(s: Session, f: OrderSearch, now: datetime, limit: int = 100, offset: int = 0) -> tuple[list[Order], int]:
    """(the page of matching orders, newest first; how many match in all)."""
    total = int(s.scalar(_where(select(func.count()).select_from(Order), f, now)) or 0)
    rows = list(s.scalars(_where(select(Order), f, now).order_by(Order.created_at.desc(), Order.id.desc())
                          .limit(limit).offset(offset)))
    return rows, total
