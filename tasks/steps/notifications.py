"""Work-waiting notifications: when an order starts waiting for a person, the people who may decide it are told.

Who: everyone the routine's rules let decide that stage of that order (models/routine.py `StageDef.deciders`,
checked person by person with models/authority.py `refusal`, the same rule the app and the run apply): the
region's assessors for the harm assessment; for the approval the role the order's plan names (the care
unit's head in office hours, the region's bakjour for an urgent order out of them); the region's account
administrators for a manual execution. The orderer is never asked to decide their own order (four eyes).
When the directory has nobody who may decide, the region's support queue is told instead, so that no order
waits unannounced. The callback stage is announced by the page (tasks/steps/paging.py).

How:
- urgent orders at once: one email per person through the outbox (Message-ID from reference, `waiting-<stage>`
  and the person: queued once, whatever retries or restarts), the paging webhook beside it (`ad.notifiers`),
  and a `unattended:<stage>` deadline row that the dispatcher fires after the region's `escalation_minutes`
  when nobody has acted (tasks/steps/notifications_escalation.py);
- non-urgent orders: a digest per person at the region's `digest_times` on working days
  (tasks/steps/notifications_digest.py).

The run tells at once (flows/order.py calls `announce_safely` before it suspends); the dispatcher's sweep
(`announce_unannounced`) tells what a run that died before that point did not.

An email carries the reference, order type, care unit, stage, deadline and a link: never a personal number,
a name or free text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.authority import refusal
from models.calendar import local
from models.regions import MAILBOX_OF
from models.routine import ROLE_LABELS_SV, STAGE_OF_STATUS, STAGES, Stage, StagePlan
from models.schemas import ORDER_TYPE_LABELS_SV
from models.status import FINAL, OrderStatus
from models.tables import Deadline, Order, OutboxMessage, Staff
from tasks.adapters import Adapters, audit, directory
from tasks.adapters.mail import Recipient
from tasks.adapters.notifiers import Notifier
from tasks.steps.orders import decider, facts, get
from tasks.steps.paging import when_local
from tasks.steps.stages import routed_to_manual

log = logging.getLogger(__name__)

ACTOR = "system:notifications"
WEBHOOK_EVENT = "order.stage.waiting"
# The stages a person is told about here (the callback has its page).
ANNOUNCED: tuple[Stage, ...] = (Stage.HARM_ASSESSMENT, Stage.APPROVAL, Stage.EXECUTION)
SUBJECT = "BRÅDSKANDE {ref}: {title} väntar på dig – klar senast kl. {hhmm}"


def event_of(stage: Stage) -> str:
    """The outbox event of a stage's announcement (one Message-ID per person with it)."""
    return f"waiting-{stage.value}"


def escalation_kind(stage: Stage) -> str:
    """The deadline row's kind of an urgent stage's escalation (kind is 30 characters at most)."""
    return f"unattended:{stage.value}"


def person_role(hsa_id: str) -> str:
    """The recipient part of a person's Message-ID: stable per person."""
    return f"p-{hsa_id}"


# --- who ------------------------------------------------------------------------------------------------

def waiting_stage(ad: Adapters, s: Session, order: Order) -> Stage | None:
    """The human stage the order waits in now (not the callback), or None."""
    status = OrderStatus(order.status)
    if status in FINAL:
        return None
    stage = STAGE_OF_STATUS.get(status)
    if stage == Stage.EXECUTION:
        # Executing waits for a person only when the gateway is manual or the order was routed to one.
        return stage if ad.gateway.current().manual or routed_to_manual(s, order) else None
    return stage if stage in ANNOUNCED else None


def deciders_for(s: Session, order: Order, stage: Stage) -> list[Staff]:
    """Everyone who may decide `stage` of `order` now, by the routine's own rule, in HSA-id order."""
    roles = set(STAGES[stage].roles)
    of_order = facts(s, order)
    people = s.scalars(select(Staff).where(Staff.active.is_(True),
                                           or_(Staff.region.is_(None), Staff.region == order.region))
                       .order_by(Staff.hsa_id))
    out = []
    for p in people:
        if roles.intersection(p.roles or []) and refusal(stage.value, decider(p), of_order) is None:
            out.append(p)
    if stage == Stage.APPROVAL and of_order.unit_head_hsa_id and not any(
            p.hsa_id == of_order.unit_head_hsa_id for p in out):
        # The unit's head may belong to no region or another region's directory entry: ask the rule.
        head = directory.staff(s, of_order.unit_head_hsa_id)
        if head is not None and refusal(stage.value, decider(head), of_order) is None:
            out.append(head)
    return out


def role_of(person: Staff, stage: Stage, plan_role: str | None) -> str:
    """The role the person is told as: the plan's role where it names one, else their first stage role."""
    if plan_role and plan_role in (person.roles or []):
        return plan_role
    return next((r for r in STAGES[stage].roles if r in (person.roles or [])), STAGES[stage].roles[0])


# --- what -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """One order waiting for people, as an email and a webhook may say it (no personal data)."""
    reference: str
    region: str
    region_name: str
    order_type: str
    order_type_label: str
    unit_hsa_id: str
    unit_name: str
    stage: Stage
    stage_title: str
    due_at: datetime
    escalates_at: datetime | None
    link: str
    urgent: bool

    def public(self, recipients: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The JSON the paging webhook gets: references, codes and times, the deciders' HSA-ids and roles."""
        return {"event": WEBHOOK_EVENT, "reference": self.reference, "region": self.region,
                "region_name": self.region_name, "order_type": self.order_type,
                "order_type_label": self.order_type_label, "unit_hsa_id": self.unit_hsa_id,
                "unit_name": self.unit_name, "stage": self.stage.value, "stage_title": self.stage_title,
                "urgent": self.urgent, "due_at": self.due_at.isoformat(),
                "escalates_at": self.escalates_at.isoformat() if self.escalates_at else None, "link": self.link,
                "recipients": [{"hsa_id": h, "role": r} for h, r in recipients]}

    def extra(self) -> dict[str, str]:
        return {"stage_title": self.stage_title, "due_local": when_local(self.due_at),
                "escalates_local": when_local(self.escalates_at) if self.escalates_at else "",
                "region_name": self.region_name, "unit_name": self.unit_name, "link": self.link}


def work_of(ad: Adapters, s: Session, order: Order, stage: Stage, escalates_at: datetime | None) -> Work:
    unit = directory.unit(s, order.care_unit_hsa_id)
    region = ad.region(order.region)
    assert order.due_at is not None
    return Work(reference=order.reference, region=order.region, region_name=region.name,
                order_type=order.order_type,
                order_type_label=ORDER_TYPE_LABELS_SV.get(order.order_type, order.order_type),
                unit_hsa_id=order.care_unit_hsa_id, unit_name=unit.name if unit else "", stage=stage,
                stage_title=STAGES[stage].title_sv, due_at=order.due_at, escalates_at=escalates_at,
                link=ad.mail.link(order.reference), urgent=order.urgent)


# --- urgent: tell at once ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Announced:
    reference: str
    stage: str
    recipients: tuple[str, ...]   # HSA-ids (or "support" for the support queue fallback)
    new: int                      # emails queued by this call (0: told before)
    escalates_at: datetime | None
    notified: dict[str, bool]


def _escalation_deadline(ad: Adapters, s: Session, order: Order, stage: Stage, now: datetime) -> datetime:
    """The stage's escalation time: the existing row's, or a new row `escalation_minutes` from now."""
    kind = escalation_kind(stage)
    due = s.scalar(select(Deadline.due_at).where(Deadline.order_reference == order.reference, Deadline.kind == kind)
                   .order_by(Deadline.id))
    if due is not None:
        return due
    due = now + timedelta(minutes=ad.region(order.region).escalation_minutes)
    s.add(Deadline(order_reference=order.reference, kind=kind, due_at=due))
    return due


def _recipients(ad: Adapters, s: Session, order: Order, stage: Stage) -> list[tuple[Recipient, str, str]]:
    """(outbox recipient, HSA-id, role) for each decider; the support queue when the directory has none."""
    plan_role = StagePlan.from_json(order.stage_plan).role(stage.value)
    people = [(Recipient(person_role(p.hsa_id), p.email), p.hsa_id, role_of(p, stage, plan_role))
              for p in deciders_for(s, order, stage) if p.email]
    if people:
        return people
    queue = ad.mailbox(order.region, "support_queue_email")
    log.warning("%s waits in %s and nobody in the directory may decide it: the support queue is told",
                order.reference, stage.value)
    return [(Recipient("support", queue), "support", "support")] if queue else []


def _queue_announcement(ad: Adapters, reference: str, stage: Stage | None, now: datetime
                        ) -> tuple[Work, list[tuple[str, str]], int] | None:
    with ad.db.session() as s:
        order = get(s, reference)
        waiting = waiting_stage(ad, s, order)
        if waiting is None or (stage is not None and waiting != stage) or not order.urgent or order.due_at is None:
            return None
        if any(d.stage == waiting.value and d.state == "proposed" for d in order.decisions):
            return None  # somebody has decided already; the run takes it without waiting
        escalates = _escalation_deadline(ad, s, order, waiting, now)
        work = work_of(ad, s, order, waiting, escalates)
        recipients = _recipients(ad, s, order, waiting)
        subject = SUBJECT.format(ref=order.reference, title=work.stage_title.lower(),
                                 hhmm=f"{local(work.due_at):%H.%M}")
        new = 0
        for r, _hsa, role in recipients:
            new += ad.mail.enqueue(s, order, event_of(waiting), [r], now=now, template="waiting", subject=subject,
                                   extra={**work.extra(), "decider_role": ROLE_LABELS_SV.get(role, role)})
        if new:
            audit.record(s, actor=ACTOR, action="work_announced", order=order, at=now,
                         detail={"stage": waiting.value, "recipients": [h for _, h, _ in recipients],
                                 "escalates_at": escalates.isoformat()})
        return work, [(h, role) for _, h, role in recipients], new


def announce(ad: Adapters, reference: str, stage: str | None = None, now: datetime | None = None, *,
             notifiers: Sequence[Notifier] | None = None) -> Announced | None:
    """Tell the deciders of the urgent order's waiting stage, now. Idempotent: a second call queues nothing
    and calls no webhook. None when there is nothing to tell (not urgent: the digest; not waiting for a
    person; another stage than `stage`)."""
    now = now or ad.now()
    got = _queue_announcement(ad, reference, Stage(stage) if stage else None, now)
    if got is None:
        return None
    work, recipients, new = got
    ad.mail.deliver(work.reference, now=max(now, ad.now()))
    notified: dict[str, bool] = {}
    if new:
        for n in (ad.notifiers if notifiers is None else notifiers):
            try:
                notified[n.name] = n.notify(work.public(recipients))
            except Exception as exc:  # a broken extra channel must never stop the email
                log.warning("notifier %s failed for %s: %s", n.name, reference, type(exc).__name__)
                notified[n.name] = False
    return Announced(work.reference, work.stage.value, tuple(h for h, _ in recipients), new, work.escalates_at,
                     notified)


def announce_safely(ad: Adapters, reference: str, stage: str | None = None) -> Announced | None:
    """`announce` for the order's run, which must never fail because of it: the dispatcher's sweep repeats."""
    try:
        return announce(ad, reference, stage)
    except Exception as exc:
        log.error("announcement of %s not made now: %s", reference, type(exc).__name__)
        return None


def announce_unannounced(ad: Adapters, now: datetime, limit: int = 100) -> list[str]:
    """Dispatcher sweep: urgent orders waiting in a human stage whose announcement was never queued."""
    statuses = [str(STAGES[st].status) for st in ANNOUNCED]
    events = [event_of(st) for st in ANNOUNCED]
    told = (select(OutboxMessage.id).where(OutboxMessage.order_reference == Order.reference,
                                           OutboxMessage.event.in_(events)).exists())
    with ad.db.session() as s:
        rows = list(s.execute(select(Order.reference, Order.status).where(
            Order.urgent.is_(True), Order.status.in_(statuses), Order.created_at <= now, ~told)
            .order_by(Order.reference).limit(limit)))
    out = []
    for ref, status in rows:
        stage = STAGE_OF_STATUS[OrderStatus(status)]
        try:
            if announce(ad, ref, stage.value, now) is not None:
                out.append(ref)
        except Exception as exc:
            log.warning("announcement sweep for %s failed: %s", ref, type(exc).__name__)
    return out


def told_about(s: Session, reference: str, stage: Stage) -> bool:
    return s.scalar(select(OutboxMessage.id).where(OutboxMessage.order_reference == reference,
                                                   OutboxMessage.event == event_of(stage)).limit(1)) is not None


# --- what a person was sent --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    at: datetime
    subject: str
    reference: str | None
    status: str           # pending | sending | sent
    to: str               # the address (the person's own, or a mailbox of their role)


def addresses_of(ad: Adapters, person: Staff) -> list[str]:
    """The person's own address and the mailboxes of their roles in their region (on-call, support queue)."""
    out = [person.email] if person.email else []
    if person.region and person.region in ad.regions:
        for role, _ in MAILBOX_OF.items():
            if role in (person.roles or []):
                box = ad.mailbox(person.region, MAILBOX_OF[role])
                if box and box not in out:
                    out.append(box)
    return out


def sent_to(ad: Adapters, hsa_id: str, limit: int = 10) -> list[Sent]:
    """The newest messages the outbox holds for this person: their start page's "Skickat till dig"."""
    with ad.db.session() as s:
        person = directory.staff(s, hsa_id)
        if person is None:
            return []
        to = addresses_of(ad, person)
        if not to:
            return []
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.recipient.in_(to))
                         .order_by(OutboxMessage.id.desc()).limit(limit))
        return [Sent(m.created_at, m.subject, m.order_reference, m.status, m.recipient) for m in rows]
