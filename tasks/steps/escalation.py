"""Escalation of missed urgent callbacks: an idempotent dispatcher over the `deadlines` table.

`escalate_due(now)` fires every callback deadline that is due (`due_at <= now`), not met and not fired:
it marks the deadline fired with one conditional UPDATE (so two dispatchers, or a dispatcher restarted
half-way, never both fire it), and in that same transaction records a deviation (avvikelse) with the
minutes late, audits it and queues the email to the region's escalation contact. After the commit it
sends that email and emits the Prefect event `order.callback.missed` (resource `order.<reference>`,
no personal data), which the automation "Missed urgent callback" shows in the dashboard.

Everything lives in the database, not in a sleeping process: the dispatcher can run every few seconds
from the housekeeping loop, once a minute from a deployment, or by hand (`restriction-orders escalate`),
from any number of processes, and a restart of everything in between only delays the escalation.

A callback counts from the moment the on-call person records it (the stored decision), not from when the
order's run gets round to accepting it: recorded at 29:59 means no escalation, even if the run is slow. The
deadline row decides a race at the boundary: recording a callback meets it in the same transaction, and the
dispatcher claims it before it reads anything, so a callback stored just before the dispatcher looked and
committed just after is still seen (see `_fire`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.status import FINAL, OrderStatus
from models.tables import Deadline, Decision, Order
from tasks.adapters import Adapters
from tasks.adapters.events import order_resource, run_related, stable_id
from tasks.adapters.mail import Recipient
from tasks.steps import deadlines, notifications, notifications_digest, notifications_escalation
from tasks.steps.paging import page_unpaged, when_local

log = logging.getLogger(__name__)

EVENT = "order.callback.missed"
DEVIATION_KIND = "callback_missed"
ACTOR = "system:escalation"


@dataclass(frozen=True)
class MissedCallback(deadlines.Escalated):
    """A missed callback escalated."""

    @property
    def event_id(self) -> uuid.UUID:
        # Stable per deadline: should the event ever be sent twice, Prefect sees the same event.
        return stable_id(EVENT, self.reference, str(self.deadline_id))

    def resource(self) -> dict[str, str]:
        return order_resource(self.reference, **{"order.reference": self.reference, "order.region": self.region,
                                                 "order.type": self.order_type})

    def payload(self) -> dict[str, Any]:
        return {"callback_due_at": self.due_at.isoformat(), "escalated_at": self.escalated_at.isoformat(),
                "minutes_late": self.minutes_late, "deviation_id": self.deviation_id}


def emit(ad: Adapters, m: MissedCallback) -> None:
    """The event for the dashboard and the automation (queued by Prefect's events worker; never raises)."""
    ad.events.emit(EVENT, m.resource(), related=run_related(m.flow_run_id), payload=m.payload(), id=m.event_id,
                   occurred=m.escalated_at)


def callback_recorded_at(s: Session, order: Order) -> datetime | None:
    """When on-call recorded the callback: the first stored (not refused) callback decision, else the
    time the order or its deadline says. None when nobody has recorded it."""
    first = s.scalar(select(func.min(Decision.created_at)).where(
        Decision.order_id == order.id, Decision.stage == "callback", Decision.state.in_(("proposed", "accepted"))))
    met = s.scalar(select(func.min(Deadline.met_at)).where(Deadline.order_reference == order.reference,
                                                           Deadline.kind == "callback"))
    times = [t for t in (first, order.callback_at, met) if t is not None]
    return min(times) if times else None


def _fire(ad: Adapters, deadline_id: int, now: datetime) -> MissedCallback | None:
    with ad.db.session() as s:
        claimed = deadlines.claim(s, deadline_id, now)
        if claimed is None:
            return None
        dl, order = claimed
        if OrderStatus(order.status) in FINAL:
            s.rollback()
            return None
        recorded = callback_recorded_at(s, order)
        if recorded is not None and recorded <= dl.due_at:
            s.rollback()
            return None  # called back in time; the run marks the deadline met when it accepts the decision
        dev, late = deadlines.deviation(s, order, DEVIATION_KIND, dl.due_at, now, ACTOR, "callback_escalated",
                                        {"deadline_id": dl.id, "callback_due_at": dl.due_at.isoformat()})
        region = ad.region(order.region)
        to = ad.required_mailbox(order.region, "escalation_email")
        ad.mail.enqueue(s, order, f"escalated-{dl.id}", [Recipient("escalation", to)],
                     now=now, template="escalated",
                     subject=f"ESKALERING {order.reference}: återuppringningen missades ({late} min sen)",
                     extra={"callback_due_local": when_local(dl.due_at), "escalated_local": when_local(now),
                            "minutes_late": str(late), "region_name": region.name})
        return MissedCallback(reference=order.reference, region=order.region, order_type=order.order_type,
                              deadline_id=dl.id, deviation_id=dev.id, due_at=dl.due_at, escalated_at=now,
                              minutes_late=late, flow_run_id=order.flow_run_id)


def due_deadlines(ad: Adapters, now: datetime, references: Collection[str] | None = None,
                  limit: int = 200) -> list[int]:
    q = (select(Deadline.id).join(Order, Order.reference == Deadline.order_reference)
         .where(Deadline.kind == "callback", Deadline.due_at <= now, Deadline.met_at.is_(None),
                Deadline.fired_at.is_(None), Order.status.not_in([str(x) for x in FINAL])))
    if references is not None:
        q = q.where(Deadline.order_reference.in_([r.strip().upper() for r in references]))
    with ad.db.session() as s:
        return list(s.scalars(q.order_by(Deadline.due_at, Deadline.id).limit(limit)))


def escalate_due(ad: Adapters, now: datetime, *, references: Collection[str] | None = None,
                 limit: int = 200) -> list[str]:
    """Escalate every missed callback that is due at `now`; returns the references escalated by this call.

    Safe to call any time, from any number of processes at once: each deadline fires exactly once.
    `references` limits the sweep (tests, the CLI)."""
    if now.tzinfo is None:
        raise ValueError("naive datetime: give a timezone")
    fired = deadlines.fire_all(due_deadlines(ad, now, references, limit), lambda i: _fire(ad, i, now), "escalation")
    for m in fired:
        log.warning("urgent callback missed for %s: escalated %s min late", m.reference, m.minutes_late)
        ad.mail.deliver(m.reference, now=max(now, ad.now()))
        emit(ad, m)
    return [m.reference for m in fired]


def dispatch(ad: Adapters, now: datetime) -> dict[str, int]:
    """One housekeeping round for the urgent path: queue pages that never went out, escalate missed callbacks;
    tell the deciders of urgent stages a run did not announce, escalate urgent stages nobody acted on, and
    send the non-urgent digests whose slot has come (tasks/steps/notifications*.py)."""
    paged = page_unpaged(ad, now)
    escalated = escalate_due(ad, now)
    announced = notifications.announce_unannounced(ad, now)
    unattended = notifications_escalation.escalate_unattended(ad, now)
    digests = notifications_digest.send_digests(ad, now)
    return {"paged": len(paged), "escalated": len(escalated), "announced": len(announced),
            "unattended": len(unattended), "digests": digests}


def run_dispatcher(ad: Adapters, every: float, stop: threading.Event, *, deliver_outbox: bool = False) -> None:
    """`dispatch` every `every` seconds until `stop` is set; with `deliver_outbox`, the outbox too.

    The orders database and SMTP only, never the Prefect API (the Prefect event is queued, not awaited):
    so neither a hanging Prefect server nor the reconciler's retries can hold up a page or an escalation.
    Run it from as many processes as you like (the serving process, the app, the `housekeeping`
    deployment): each deadline fires once, whoever gets its row first."""
    while not stop.is_set():
        try:
            dispatch(ad, ad.clock.now())
            if deliver_outbox:
                ad.mail.deliver()
        except Exception as exc:  # keep going: the next round repairs what this one could not
            log.warning("urgent dispatch round failed: %s", type(exc).__name__)
        stop.wait(every)


def start_dispatcher(ad: Adapters, every: float, *, name: str,
                     deliver_outbox: bool = False) -> tuple[threading.Thread, threading.Event]:
    """`run_dispatcher` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_dispatcher, args=(ad, every, stop), kwargs={"deliver_outbox": deliver_outbox},
                              daemon=True, name=name)
    thread.start()
    return thread, stop
