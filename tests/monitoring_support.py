"""Helpers for the monitoring tests (SLA monitor, reviews, audit extracts, admin pages).

Orders are stored through `tasks.steps.orders.submit` at a time the test chooses, far in the past
(2019-2023), so no other test's orders are due or under review at those times and the other tests'
orders never show up in these tests' monitor runs. Every order gets its own patient, made here.

The orders are "detached" from the engine: they get a random flow_run_id, so the housekeeping reconciler
(running when the end-to-end tests' flow server is up in the same session) leaves them alone.

Every helper that touches the orders database takes the adapters (`ad`) first.
"""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from models.clock import STOCKHOLM, FixedClock
from models.status import OrderStatus
from models.tables import AuditEvent, Deviation, Order, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
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


def fixed_adapters(settings: Settings, db: Database, at: datetime) -> tuple[Adapters, FixedClock]:
    """Adapters of the test's own whose clock stands at `at` until the test moves it (the in-process engine,
    the session's database; `ad.events.sent` records only this test's events)."""
    from flows.bootstrap import in_process
    clock = FixedClock(at)
    return in_process(settings, db=db, clock=clock), clock


def body(pnr: str, order_type: str = "seal_or_lock", region: str = "kalmar", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"order_type": order_type, "initiative": "care", "patient_personal_number": pnr,
                         "care_unit_hsa_id": f"DEMO-{region.upper()}-UNIT", "region": region,
                         "reason": "Hot mot patienten"}
    if order_type in ("seal_or_lock", "restore_access"):
        b["actions"] = ["seal_journal", "lock_login"]
    b.update(extra)
    return b


def detach(ad: Adapters, reference: str) -> None:
    with ad.db.session() as s:
        orders.get(s, reference).flow_run_id = str(uuid.uuid4())


def submit_at(ad: Adapters, at: datetime, b: dict[str, Any], actor: str | None = None) -> str:
    # A clinician orders only for their own region's units (issue 16): by default the body's region's clinician.
    out = orders.submit(ad, b, actor or f"DEMO-{str(b.get('region', 'kalmar')).upper()}-CLINICIAN", at)
    assert out.kind == "created", [e.model_dump() for e in out.check.errors]
    assert out.order is not None
    detach(ad, out.order.reference)
    return out.order.reference


def execute_at(ad: Adapters, at: datetime, reference: str) -> None:
    """Take a submitted order through the routine to `completed` in the simulated registry, as the flow does."""
    from tasks.adapters.gateway import SimulatedRegistry
    from tasks.steps.stages import _complete
    with ad.db.session() as s:
        order = orders.get(s, reference)
        for st in (OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL, OrderStatus.EXECUTING):
            orders.transition(s, order, st, actor="system", at=at)
        system_ref = SimulatedRegistry().apply(s, order, at)
        _complete(ad, s, order, "system", system_ref, at)


def set_status(ad: Adapters, reference: str, status: OrderStatus, at: datetime) -> None:
    with ad.db.session() as s:
        order = orders.get(s, reference)
        path = {OrderStatus.REJECTED: [OrderStatus.AWAITING_ASSESSMENT, OrderStatus.REJECTED],
                OrderStatus.FAILED: [OrderStatus.FAILED],
                OrderStatus.COMPLETED: [OrderStatus.AWAITING_ASSESSMENT, OrderStatus.AWAITING_APPROVAL,
                                        OrderStatus.EXECUTING, OrderStatus.COMPLETED],
                OrderStatus.CANCELLED: [OrderStatus.CANCELLED],
                OrderStatus.AWAITING_ASSESSMENT: [OrderStatus.AWAITING_ASSESSMENT]}[status]
        for st in path:
            orders.transition(s, order, st, actor="system", at=at)


def audit_rows(ad: Adapters, reference: str, action: str | None = None) -> list[AuditEvent]:
    with ad.db.session() as s:
        q = select(AuditEvent).where(AuditEvent.order_reference == reference)
        if action:
            q = q.where(AuditEvent.action == action)
        return list(s.scalars(q.order_by(AuditEvent.id)))


def outbox(ad: Adapters, reference: str, prefix: str = "") -> list[OutboxMessage]:
    with ad.db.session() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == reference)
                         .order_by(OutboxMessage.id))
        return [m for m in rows if m.event.startswith(prefix)]


def deviations(ad: Adapters, reference: str) -> list[Deviation]:
    with ad.db.session() as s:
        return list(s.scalars(select(Deviation).where(Deviation.order_reference == reference)))


def order(ad: Adapters, reference: str) -> Order:
    with ad.db.session() as s:
        o = orders.get(s, reference)
        s.expunge(o)
        return o


def patient_orders(ad: Adapters, pnr_digits: str) -> list[str]:
    with ad.db.session() as s:
        return list(s.scalars(select(Order.reference).where(Order.patient_pnr == pnr_digits)))
