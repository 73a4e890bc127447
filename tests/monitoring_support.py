"""Helpers for the monitoring tests (SLA monitor, reviews, audit extracts, admin pages).

Orders are stored through `tasks.orders.submit` at a time the test chooses (FixedClock), far in the past
(2019-2023), so no other test's orders are due or under review at those times and the other tests'
orders never show up in these tests' monitor runs. Every order gets its own patient, made here.

The orders are "detached" from Prefect: they get a random flow_run_id, so the housekeeping reconciler
(running when the end-to-end tests' flow server is up in the same session) leaves them alone.
"""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from models.clock import STOCKHOLM
from models.status import OrderStatus
from models.tables import AuditEvent, Deviation, Order, OutboxMessage
from tasks.adapters.database import session
from tasks.steps import orders
from tests.e2e import personal_number

CLINICIAN = "DEMO-KALMAR-CLINICIAN"
HEAD = "DEMO-KALMAR-HEAD"
ADMIN = "DEMO-ADMIN"
_rng = random.Random(uuid.uuid4().int)


def patient() -> str:
    """A fresh adult's personal number (born 1940-1989), made here and never copied from anywhere."""
    born = date(1940, 1, 1) + timedelta(days=_rng.randrange(0, 18000))
    return personal_number(born, _rng.randrange(100, 980))


def stockholm(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=STOCKHOLM)


def body(pnr: str, order_type: str = "seal_or_lock", region: str = "kalmar", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"order_type": order_type, "initiative": "care", "patient_personal_number": pnr,
                         "care_unit_hsa_id": f"DEMO-{region.upper()}-UNIT", "region": region,
                         "reason": "Hot mot patienten"}
    if order_type in ("seal_or_lock", "restore_access"):
        b["actions"] = ["seal_journal", "lock_login"]
    b.update(extra)
    return b


def detach(reference: str) -> None:
    with session() as s:
        orders.get(s, reference).flow_run_id = str(uuid.uuid4())


def submit_at(at: datetime, b: dict[str, Any], actor: str = CLINICIAN) -> str:
    out = orders.submit(b, actor, at)
    assert out.kind == "created", [e.model_dump() for e in out.check.errors]
    assert out.order is not None
    detach(out.order.reference)
    return out.order.reference


def execute_at(at: datetime, reference: str) -> None:
    """Take a submitted order through the routine to `completed` in the simulated registry, as the flow does."""
    from tasks.adapters.gateway import SimulatedRegistry
    from tasks.steps.stages import _complete
    with session() as s:
        order = orders.get(s, reference)
        for st in (OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL, OrderStatus.EXECUTING):
            orders.transition(s, order, st, actor="system", at=at)
        system_ref = SimulatedRegistry().apply(s, order)
        _complete(s, order, "system", system_ref, at)


def set_status(reference: str, status: OrderStatus, at: datetime) -> None:
    with session() as s:
        order = orders.get(s, reference)
        path = {OrderStatus.REJECTED: [OrderStatus.AWAITING_ASSESSMENT, OrderStatus.REJECTED],
                OrderStatus.FAILED: [OrderStatus.FAILED],
                OrderStatus.COMPLETED: [OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL,
                                        OrderStatus.EXECUTING, OrderStatus.COMPLETED],
                OrderStatus.CANCELLED: [OrderStatus.CANCELLED],
                OrderStatus.AWAITING_ASSESSMENT: [OrderStatus.AWAITING_ASSESSMENT]}[status]
        for st in path:
            orders.transition(s, order, st, actor="system", at=at)


def audit_rows(reference: str, action: str | None = None) -> list[AuditEvent]:
    with session() as s:
        q = select(AuditEvent).where(AuditEvent.order_reference == reference)
        if action:
            q = q.where(AuditEvent.action == action)
        return list(s.scalars(q.order_by(AuditEvent.id)))


def outbox(reference: str, prefix: str = "") -> list[OutboxMessage]:
    with session() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == reference)
                         .order_by(OutboxMessage.id))
        return [m for m in rows if m.event.startswith(prefix)]


def deviations(reference: str) -> list[Deviation]:
    with session() as s:
        return list(s.scalars(select(Deviation).where(Deviation.order_reference == reference)))


def order(reference: str) -> Order:
    with session() as s:
        o = orders.get(s, reference)
        s.expunge(o)
        return o


def patient_orders(pnr_digits: str) -> list[str]:
    with session() as s:
        return list(s.scalars(select(Order.reference).where(Order.patient_pnr == pnr_digits)))
