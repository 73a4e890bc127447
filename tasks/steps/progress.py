"""One order's stages as people see them: done (who, when, outcome), waiting (for whom), pending or not
required (and the rule that said so).

The API's `stages`, the order page and the decision cards all read this, so the approver sees the same
assessment the order page shows. The rules are `models.routine.progress`; this module only reads the
database for it.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.routine import DecisionFacts, StagePlan, StageProgress, progress
from models.status import OrderStatus
from models.tables import AuditEvent, Order


def accepted_decisions(order: Order) -> list[DecisionFacts]:
    """The decisions the flow accepted, oldest first (a refused or still proposed one decided nothing)."""
    return [DecisionFacts(d.stage, d.decided_by, d.created_at, d.outcome, d.detail or {}, d.text or "")
            for d in order.decisions if d.state == "accepted"]


def order_progress(s: Session, order: Order) -> list[StageProgress]:
    """Every stage of `order`, in the routine's order, execution last; none before the stages are planned
    (a paper order not yet received)."""
    if not order.stage_plan:
        return []
    executed: AuditEvent | None = None
    if order.status == OrderStatus.COMPLETED:
        executed = s.scalars(select(AuditEvent).where(AuditEvent.order_reference == order.reference,
                                                      AuditEvent.action == "executed")
                             .order_by(AuditEvent.seq.desc()).limit(1)).first()
    return progress(StagePlan.from_json(order.stage_plan), OrderStatus(order.status), accepted_decisions(order),
                    executed_by=executed.actor if executed else None,
                    executed_at=executed.at if executed else None)
