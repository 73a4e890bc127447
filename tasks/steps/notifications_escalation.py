"""An urgent human stage nobody acted on: escalated once, like a missed callback (tasks/steps/escalation.py).

When an urgent order starts waiting for a person (tasks/steps/notifications.py) a deadline row
`unattended:<stage>` is stored, `escalation_minutes` (region setting, default 30) after the announcement. The
dispatcher fires it like the callback deadline: one conditional UPDATE claims the row (so two dispatchers,
or one restarted half-way, never both fire it), then the order is read. When somebody acted in time (the
order left the stage, or a decision on the stage was stored before the deadline) the row is marked met.
Otherwise, in the same transaction: a deviation `stage_unattended`, the audit row `stage_escalated`, and
one email to the next level: the region's support queue and its on-call manager (`on_call_manager_email`,
else the escalation contact). After the commit the email is sent and the Prefect event
`order.stage.unattended` is emitted. References, codes and times only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.routine import ROLE_LABELS_SV, STAGES, Stage
from models.status import FINAL, OrderStatus
from models.tables import AuditEvent, Deadline, Decision, Order
from tasks.adapters import Adapters
from tasks.adapters.events import order_resource, run_related, stable_id
from tasks.adapters.mail import Recipient
from tasks.steps import deadlines
from tasks.steps.notifications import work_of
from tasks.steps.paging import when_local

log = logging.getLogger(__name__)

EVENT = "order.stage.unattended"
DEVIATION_KIND = "stage_unattended"
ACTOR = "system:escalation"
KIND_PREFIX = "unattended:"


@dataclass(frozen=True)
class Unattended(deadlines.Escalated):
    """An urgent stage nobody acted on, escalated."""
    stage: str = ""


def next_level(ad: Adapters, region: str) -> list[Recipient]:
    """Support, then the region's on-call manager (its escalation contact when no manager is set)."""
    out: list[Recipient] = []
    queue = ad.mailbox(region, "support_queue_email")
    if queue:
        out.append(Recipient("support", queue))
    manager = ad.region(region).on_call_manager_email.address(demo=ad.settings.demo)
    manager = manager or ad.mailbox(region, "escalation_email")
    if manager and manager not in {r.address for r in out}:
        out.append(Recipient("on_call_manager", manager))
    return out


def acted_by(s: Session, order: Order, stage: Stage, due: datetime) -> datetime | None:
    """When somebody acted on the stage: a decision stored by a person who may take it (proposed or accepted;
    a refused attempt leaves the stage waiting) before `due`, or the order's leaving the stage. None: nobody
    has acted."""
    decided = s.scalar(select(Decision.created_at).where(
        Decision.order_id == order.id, Decision.stage == stage.value, Decision.state.in_(("proposed", "accepted")),
        Decision.created_at <= due).order_by(Decision.created_at).limit(1))
    if decided is not None:
        return decided
    if OrderStatus(order.status) != STAGES[stage].status or OrderStatus(order.status) in FINAL:
        return order.updated_at
    return None


def _announced_at(s: Session, reference: str, stage: Stage) -> datetime | None:
    """When the stage's deciders were told (the audit row `work_announced` of that stage)."""
    rows = s.execute(select(AuditEvent.at, AuditEvent.detail).where(AuditEvent.order_reference == reference,
                                                                    AuditEvent.action == "work_announced")
                     .order_by(AuditEvent.id))
    return next((at for at, detail in rows if (detail or {}).get("stage") == stage.value), None)


def _fire(ad: Adapters, deadline_id: int, now: datetime) -> Unattended | None:
    with ad.db.session() as s:
        claimed = deadlines.claim(s, deadline_id, now)
        if claimed is None:
            return None
        dl, order = claimed
        stage = Stage(dl.kind.removeprefix(KIND_PREFIX))
        acted = acted_by(s, order, stage, dl.due_at)
        if acted is not None:
            dl.fired_at, dl.met_at = None, min(acted, now)
            return None
        dev, late = deadlines.deviation(s, order, DEVIATION_KIND, dl.due_at, now, ACTOR, "stage_escalated",
                                        {"stage": stage.value, "deadline_id": dl.id,
                                         "escalates_at": dl.due_at.isoformat()})
        announced = _announced_at(s, order.reference, stage)
        work = work_of(ad, s, order, stage, dl.due_at)
        waited = int((now - announced).total_seconds() // 60) if announced else ad.region(order.region).escalation_minutes
        roles = STAGES[stage].roles
        for r in next_level(ad, order.region):
            ad.mail.enqueue(s, order, f"unattended-{stage.value}", [r], now=now, template="unattended",
                            subject=f"ESKALERING {order.reference}: {work.stage_title.lower()} utan åtgärd "
                                    f"i {waited} min",
                            extra={**work.extra(), "minutes_waited": str(waited),
                                   "announced_local": when_local(announced) if announced else "–",
                                   "deciders": ", ".join(ROLE_LABELS_SV.get(x, x).lower() for x in roles),
                                   "recipient_label": "support" if r.role == "support" else "jourhavande chef"})
        return Unattended(order.reference, order.region, order.order_type, dl.id, dev.id, dl.due_at, now, late,
                          order.flow_run_id, stage=stage.value)


def due_rows(ad: Adapters, now: datetime, limit: int = 200) -> list[int]:
    q = (select(Deadline.id).where(Deadline.kind.like(f"{KIND_PREFIX}%"), Deadline.due_at <= now,
                                   Deadline.met_at.is_(None), Deadline.fired_at.is_(None))
         .order_by(Deadline.due_at, Deadline.id).limit(limit))
    with ad.db.session() as s:
        return list(s.scalars(q))


def emit(ad: Adapters, u: Unattended) -> None:
    ad.events.emit(EVENT, order_resource(u.reference, **{"order.reference": u.reference, "order.region": u.region,
                                                         "order.type": u.order_type, "order.stage": u.stage}),
                   related=run_related(u.flow_run_id),
                   payload={"stage": u.stage, "escalates_at": u.due_at.isoformat(),
                            "escalated_at": u.escalated_at.isoformat(), "minutes_late": u.minutes_late,
                            "deviation_id": u.deviation_id},
                   id=stable_id(EVENT, u.reference, str(u.deadline_id)), occurred=u.escalated_at)


def escalate_unattended(ad: Adapters, now: datetime, limit: int = 200) -> list[str]:
    """Escalate every urgent stage nobody acted on in time; each deadline row fires at most once."""
    fired = deadlines.fire_all(due_rows(ad, now, limit), lambda i: _fire(ad, i, now), "stage escalation")
    for u in fired:
        log.warning("urgent %s: %s unattended, escalated %s min late", u.reference, u.stage, u.minutes_late)
        ad.mail.deliver(u.reference, now=max(now, ad.now()))
        emit(ad, u)
    return [u.reference for u in fired]
