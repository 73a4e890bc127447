"""The non-urgent digest: one email per person at the region's `digest_times` on working days (default 08:00
and 13:00), listing the non-urgent orders waiting for them, instead of one email per order.

Fired by the dispatcher (tasks/steps/escalation.py `dispatch`), which runs every few seconds to every minute:
each round looks at the latest slot of each region (today, a working day, at or before now). A slot is sent
once: a ledger row in `deadlines` (order_reference `DIGEST`, kind `digest:<region>`, due_at the slot) is
inserted in the same transaction as the digests it stands for, so a second dispatcher fails on the unique
key and sends nothing, and a dispatcher that dies before its commit leaves the slot to the next round. Each
digest's Message-ID is made from the region, the slot and the person as well, so a message is never queued
twice. A slot that passed while nothing ran is sent when the dispatcher next runs on the same day.

Who is on an order's list is the same rule as the urgent announcement (tasks/steps/notifications.py
`deciders_for`). The digest carries references, order types, care units, stages, due times and links only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.calendar import is_working_day, local
from models.clock import STOCKHOLM
from models.regions import RegionSettings
from models.routine import ROLE_LABELS_SV, STAGES, StagePlan
from models.tables import Deadline, Order, OutboxMessage, Staff
from tasks.adapters import Adapters
from tasks.adapters.mail import message_id, templates
from tasks.steps.notifications import ANNOUNCED, deciders_for, role_of, waiting_stage, work_of
from tasks.steps.paging import when_local

log = logging.getLogger(__name__)
LEDGER_REFERENCE = "DIGEST"


def slot_at(now: datetime, region: RegionSettings) -> datetime | None:
    """The region's latest digest slot at `now`: today (a working day) at one of its `digest_times` not after
    now; None before the first one or on a day off."""
    t = local(now)
    if not is_working_day(t.date()):
        return None
    passed = [x for x in sorted(region.digest_times) if x <= t.time().replace(tzinfo=None)]
    return datetime.combine(t.date(), passed[-1], tzinfo=STOCKHOLM) if passed else None


def ledger_kind(region: str) -> str:
    return f"digest:{region}"[:30]


def slot_key(slot: datetime) -> str:
    return f"{local(slot):%Y%m%dT%H%M}"


@dataclass(frozen=True)
class Item:
    reference: str
    order_type_label: str
    unit_name: str
    stage_title: str
    due_local: str
    link: str


def waiting_lists(ad: Adapters, s: Session, region: str) -> dict[str, tuple[Staff, str, list[Item]]]:
    """Per person (HSA-id): the person, the role they decide as, and the non-urgent orders waiting for them."""
    statuses = [str(STAGES[st].status) for st in ANNOUNCED]
    orders = s.scalars(select(Order).where(Order.region == region, Order.urgent.is_(False),
                                           Order.status.in_(statuses)).order_by(Order.due_at, Order.id))
    out: dict[str, tuple[Staff, str, list[Item]]] = {}
    for order in orders:
        stage = waiting_stage(ad, s, order)
        if stage is None or order.due_at is None:
            continue
        w = work_of(ad, s, order, stage, None)
        item = Item(w.reference, w.order_type_label, w.unit_name, w.stage_title, when_local(w.due_at), w.link)
        plan_role = StagePlan.from_json(order.stage_plan).role(stage.value)
        for p in deciders_for(s, order, stage):
            if not p.email:
                continue
            entry = out.setdefault(p.hsa_id, (p, role_of(p, stage, plan_role), []))
            entry[2].append(item)
    return out


def _queue_slot(ad: Adapters, region: RegionSettings, slot: datetime, now: datetime) -> int:
    """Claim the slot and queue its digests, in one transaction; the number queued (0: taken before)."""
    with ad.db.session() as s:
        if s.scalar(select(Deadline.id).where(Deadline.order_reference == LEDGER_REFERENCE,
                                              Deadline.kind == ledger_kind(region.code),
                                              Deadline.due_at == slot)) is not None:
            return 0
        s.add(Deadline(order_reference=LEDGER_REFERENCE, kind=ledger_kind(region.code), due_at=slot, fired_at=now,
                       met_at=now))
        try:
            s.flush()
        except IntegrityError:  # another dispatcher has this slot
            s.rollback()
            return 0
        queued = 0
        lists = waiting_lists(ad, s, region.code)
        by_role: dict[str, int] = defaultdict(int)
        for hsa, (person, role, items) in sorted(lists.items()):
            mid = message_id(f"DIGEST-{region.code}-{slot_key(slot)}", "digest", f"p-{hsa}")
            if s.scalar(select(OutboxMessage.id).where(OutboxMessage.message_id == mid)) is not None:
                continue
            subject = (f"Att göra: {len(items)} beställning{'ar' if len(items) != 1 else ''} väntar på dig "
                       f"({local(slot):%Y-%m-%d kl. %H.%M})")
            ctx = {"subject": subject, "items": items, "role_label": ROLE_LABELS_SV.get(role, role),
                   "slot_local": when_local(slot), "region_name": region.name}
            s.add(OutboxMessage(message_id=mid, order_reference=None, event="digest", recipient=person.email,
                                subject=subject, body_text=templates().get_template("email/digest.txt.j2").render(ctx),
                                body_html=templates().get_template("email/digest.html.j2").render(ctx),
                                status="pending", attempts=0, created_at=now, next_attempt_at=now))
            queued += 1
            by_role[role] += 1
        log.info("digest %s %s: %d queued %s", region.code, slot_key(slot), queued, dict(by_role))
        return queued


def send_digests(ad: Adapters, now: datetime) -> int:
    """Queue the digests of every region's current slot that was not sent yet, then send them; how many."""
    queued = 0
    for region in ad.regions.values():
        slot = slot_at(now, region)
        if slot is None:
            continue
        try:
            queued += _queue_slot(ad, region, slot, now)
        except Exception as exc:  # one region's trouble must not stop the others; the next round retries
            log.warning("digest of %s failed: %s", region.code, type(exc).__name__)
    if queued:
        ad.mail.deliver(now=max(now, ad.now()))
    return queued
