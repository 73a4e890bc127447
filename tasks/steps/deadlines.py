"""Deadlines as database rows: a callback due within the region's callback time, an order due in one working day.

They are fired by an idempotent dispatcher (the SLA and urgent flows), never by a sleeping process,
so a restart of everything in between loses nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.calendar import due_at as normal_due_at
from models.tables import Deadline, Order
from tasks.adapters import Adapters, audit


def schedule(s: Session, order: Order) -> None:
    if order.callback_due_at is not None:
        s.add(Deadline(order_reference=order.reference, kind="callback", due_at=order.callback_due_at))
    if order.due_at is not None and not order.urgent:
        s.add(Deadline(order_reference=order.reference, kind="due", due_at=order.due_at))


def meet(s: Session, reference: str, kind: str, at: datetime) -> None:
    """The promise was kept (callback made, order done): the dispatcher will not fire it."""
    s.execute(update(Deadline).where(Deadline.order_reference == reference, Deadline.kind == kind,
                                     Deadline.met_at.is_(None)).values(met_at=at))


def callback_made(ad: Adapters, s: Session, order: Order, at: datetime, actor: str) -> None:
    """On-call has called back: stop the callback clock, and from now on the order is due when a non-urgent
    order submitted at the same moment would be. Until the callback its due time is the callback deadline;
    left there, an urgent order called back in time would go red after 30 minutes."""
    order.callback_at = at
    meet(s, order.reference, "callback", at)
    due = normal_due_at(order.created_at, ad.region(order.region).hours)
    if order.due_at == due:
        return  # made urgent after submission: it kept its normal due time
    before = order.due_at
    order.due_at = due
    row = s.scalar(select(Deadline).where(Deadline.order_reference == order.reference, Deadline.kind == "due",
                                          Deadline.met_at.is_(None), Deadline.fired_at.is_(None)))
    if row is None:
        s.add(Deadline(order_reference=order.reference, kind="due", due_at=due))
    else:
        row.due_at = due
    audit.record(s, actor=actor, action="due_rescheduled", order=order, at=at,
                 detail={"why": "callback_recorded", "from": before.astimezone(UTC).isoformat() if before else None,
                         "due_at": due.astimezone(UTC).isoformat()})


def open_deadlines(s: Session, reference: str) -> list[Deadline]:
    return list(s.scalars(select(Deadline).where(Deadline.order_reference == reference,
                                                 Deadline.met_at.is_(None))))
