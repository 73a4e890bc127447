"""Work queues: the orders waiting in a stage that one person may decide, selected in SQL from the stage's
deciders in models/routine.py (the same definition models/authority.refusal checks each row against).

The filter runs before the limit: a limit taken before the region or unit filter would fill the page with
other regions' orders and hide this one's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, false, func, or_, select, true

from models.routine import Decider, Stage, StageDef, stage_def
from models.status import FINAL, OrderStatus
from models.tables import CareUnit, Order


def _planned_role(stage: Stage) -> Any:
    return func.coalesce(Order.stage_plan[(stage.value, "role")].as_string(), "head_of_department")


def _in_scope(rule: Decider, hsa_id: str, region: str | None) -> Any:
    """The rule's scope as SQL: the same cases as models.authority._in_scope."""
    if rule.scope == "unit_head":
        return Order.care_unit_hsa_id.in_(select(CareUnit.hsa_id).where(CareUnit.head_hsa_id == hsa_id))
    if rule.scope == "own_region":
        return Order.region == region if region else false()
    return Order.region == region if region else true()


def mine(sd: StageDef, hsa_id: str, roles: tuple[str, ...], region: str | None) -> Any:
    """Orders of `sd`'s stage this person may decide, as a WHERE clause."""
    clauses = []
    for rule in sd.deciders:
        if rule.role not in roles:
            continue
        scope = _in_scope(rule, hsa_id, region)
        clauses.append(and_(_planned_role(sd.stage) == rule.role, scope) if sd.role_from_plan else scope)
    return or_(*clauses) if clauses else false()


def deadline_column(stage: str) -> Any:
    """The deadline a queue row shows and is sorted by: the callback's in the callback queue, else the order's."""
    return Order.callback_due_at if stage == Stage.CALLBACK else Order.due_at


def waiting(stage: str) -> Select[tuple[Order]]:
    """Every order waiting for `stage`: urgent first, then the nearest deadline, then the oldest (the
    contract's queue order; a row without a deadline, a paper order, comes after those with one). The
    callback queue holds every running callback clock: also orders made urgent after their callback stage,
    and urgent orders whose run has not received them yet (the engine down)."""
    deadline = deadline_column(stage)
    order_by = (Order.urgent.desc(), deadline.is_(None), deadline, Order.created_at, Order.id)
    if stage != Stage.CALLBACK:
        return select(Order).where(Order.status == stage_def(stage).status).order_by(*order_by)
    open_statuses = [st.value for st in OrderStatus if st not in FINAL and st != OrderStatus.PAPER_FALLBACK]
    return (select(Order).where(Order.urgent.is_(True), Order.callback_at.is_(None),
                                Order.callback_due_at.is_not(None), Order.status.in_(open_statuses))
            .order_by(*order_by))


def queue_query(stage: str, hsa_id: str, roles: tuple[str, ...], region: str | None, *,
                unit: str | None = None, order_type: str | None = None) -> Select[tuple[Order]]:
    """This person's orders of `stage`, optionally only one care unit's or one order type's (the filters
    run in SQL, before the page's limit)."""
    q = waiting(stage).where(mine(stage_def(stage), hsa_id, roles, region))
    if unit:
        q = q.where(Order.care_unit_hsa_id == unit)
    if order_type:
        q = q.where(Order.order_type == order_type)
    return q
