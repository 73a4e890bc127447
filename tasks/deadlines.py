"""Deadlines as database rows: a callback due in 30 minutes, an order due in one working day.

They are fired by an idempotent dispatcher (the SLA and urgent flows), never by a sleeping process,
so a restart of everything in between loses nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.tables import Deadline, Order


def schedule(s: Session, order: Order) -> None:
    if order.callback_due_at is not None:
        s.add(Deadline(order_reference=order.reference, kind="callback", due_at=order.callback_due_at))
    if order.due_at is not None and not order.urgent:
        s.add(Deadline(order_reference=order.reference, kind="due", due_at=order.due_at))


def meet(s: Session, reference: str, kind: str, at: datetime) -> None:
    """The promise was kept (callback made, order done): the dispatcher will not fire it."""
    s.execute(update(Deadline).where(Deadline.order_reference == reference, Deadline.kind == kind,
                                     Deadline.met_at.is_(None)).values(met_at=at))


def open_deadlines(s: Session, reference: str) -> list[Deadline]:
    return list(s.scalars(select(Deadline).where(Deadline.order_reference == reference,
                                                 Deadline.met_at.is_(None))))
