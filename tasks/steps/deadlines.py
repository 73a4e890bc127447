"""Deadlines as database rows: a callback due within the region's callback time, an order due in one working day
(an urgent one within the region's `urgent_target_hours`), an urgent human stage that escalates when nobody acts.

They are fired by an idempotent dispatcher (the SLA and urgent flows), never by a sleeping process,
so a restart of everything in between loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import sla
from models.calendar import urgent_due_at
from models.tables import Deadline, Deviation, Order
from tasks.adapters import Adapters, audit

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Escalated:
    """A missed deadline escalated, as told to Prefect and the people: references and times only."""
    reference: str
    region: str
    order_type: str
    deadline_id: int
    deviation_id: int
    due_at: datetime
    escalated_at: datetime
    minutes_late: int
    flow_run_id: str | None


def schedule(s: Session, order: Order) -> None:
    if order.callback_due_at is not None:
        s.add(Deadline(order_reference=order.reference, kind="callback", due_at=order.callback_due_at))
    if order.due_at is not None:
        s.add(Deadline(order_reference=order.reference, kind="due", due_at=order.due_at))


def set_due(s: Session, order: Order, due: datetime, actor: str, at: datetime, why: str) -> None:
    """Move the order's due time (and its open `due` deadline row) to `due`, audited."""
    if order.due_at == due:
        return
    before = order.due_at
    order.due_at = due
    row = s.scalar(select(Deadline).where(Deadline.order_reference == order.reference, Deadline.kind == "due",
                                          Deadline.met_at.is_(None), Deadline.fired_at.is_(None)))
    if row is None:
        s.add(Deadline(order_reference=order.reference, kind="due", due_at=due))
    else:
        row.due_at = due
    audit.record(s, actor=actor, action="due_rescheduled", order=order, at=at,
                 detail={"why": why, "from": before.astimezone(UTC).isoformat() if before else None,
                         "due_at": due.astimezone(UTC).isoformat()})


def meet(s: Session, reference: str, kind: str, at: datetime) -> None:
    """The promise was kept (callback made, order done): the dispatcher will not fire it."""
    s.execute(update(Deadline).where(Deadline.order_reference == reference, Deadline.kind == kind,
                                     Deadline.met_at.is_(None)).values(met_at=at))


def callback_made(ad: Adapters, s: Session, order: Order, at: datetime, actor: str) -> None:
    """On-call has called back: stop the callback clock. The order stays urgent and keeps its execution
    target (`due_at`, submission + the region's `urgent_target_hours`): it is never moved to the next working
    day. An order stored before that target existed was due at its callback deadline; it gets the target now."""
    order.callback_at = at
    meet(s, order.reference, "callback", at)
    if order.due_at is None or (order.callback_due_at is not None and order.due_at <= order.callback_due_at):
        set_due(s, order, urgent_due_at(order.created_at, ad.region(order.region).urgent_target_hours), actor, at,
                "urgent_target")


def open_deadlines(s: Session, reference: str) -> list[Deadline]:
    return list(s.scalars(select(Deadline).where(Deadline.order_reference == reference,
                                                 Deadline.met_at.is_(None))))


def claim(s: Session, deadline_id: int, now: datetime) -> tuple[Deadline, Order] | None:
    """Claim a due deadline for firing, then read it and its order; None when another dispatcher (or the
    act it waits for) got there first. Claim first, read after: the UPDATE takes the deadline row (a row
    lock on PostgreSQL, the write lock on SQLite), and the act that meets the deadline meets that same row in
    its own transaction, so one committed first makes this UPDATE change nothing and one still being
    committed makes it wait. Only then is the order read (a fresh snapshot per statement)."""
    res = s.execute(update(Deadline).where(Deadline.id == deadline_id, Deadline.fired_at.is_(None),
                                           Deadline.met_at.is_(None), Deadline.due_at <= now)
                    .values(fired_at=now))
    if getattr(res, "rowcount", 0) != 1:
        s.rollback()
        return None
    dl = s.get(Deadline, deadline_id)
    order = s.scalar(select(Order).where(Order.reference == dl.order_reference)) if dl else None
    if dl is None or order is None:
        s.rollback()
        return None
    return dl, order


def deviation(s: Session, order: Order, kind: str, due_at: datetime, now: datetime, actor: str, action: str,
              detail: dict[str, object]) -> tuple[Deviation, int]:
    """A missed deadline recorded: the deviation and its audit row (with the deviation's id); (it, minutes late)."""
    late = sla.minutes_late(due_at, now)
    dev = Deviation(order_reference=order.reference, kind=kind, minutes_late=late, at=now)
    s.add(dev)
    s.flush()
    audit.record(s, actor=actor, action=action, order=order, at=now,
                 detail={**detail, "deviation_id": dev.id, "minutes_late": late})
    return dev, late


def fire_all(ids: Iterable[int], fire: Callable[[int], T | None], what: str) -> list[T]:
    """Fire each due deadline; what fired. One broken row must not stop the others: the next round retries it."""
    fired: list[T] = []
    for deadline_id in ids:
        try:
            done = fire(deadline_id)
        except Exception as exc:
            log.warning("%s of deadline %s failed: %s", what, deadline_id, type(exc).__name__)
            continue
        if done is not None:
            fired.append(done)
    return fired
