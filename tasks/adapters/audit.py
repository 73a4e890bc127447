"""The append-only audit log: who did what to which order, when, from which state.

Every row is hash-chained to the one before it when its transaction commits (tasks/adapters/audit_chain.py,
installed here), so a row changed, removed or slipped in afterwards shows in `restriction-orders audit
verify`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from models.tables import AuditEvent, Order
from tasks.adapters import audit_chain

audit_chain.install()


def record(s: Session, *, actor: str, action: str, order: Order | None = None, from_status: str | None = None,
           to_status: str | None = None, patient_pnr: str | None = None, channel: str = "app",
           detail: dict[str, Any] | None = None, at: datetime | None = None) -> AuditEvent:
    ev = AuditEvent(
        at=(at or datetime.now(UTC)), actor=actor, action=action,
        order_reference=order.reference if order else None,
        patient_pnr=patient_pnr or (order.patient_pnr if order else None),
        from_status=from_status, to_status=to_status, channel=channel, detail=detail or {},
    )
    audit_chain.add(s, ev)  # inserted and hash-chained when `s` commits
    return ev
