"""The emails an order's final status calls for (models.routine.CONFIRMATIONS): to the head of department
and the orderer when it is completed, to the orderer when it is rejected or cancelled, to the orderer and
the region's support queue when the registry refused it.

Queued in the transaction that sets the status, so a crash right after cannot lose them; queueing again
adds nothing (tasks/adapters/mail.py: one Message-ID per recipient and event).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from models.routine import CONFIRMATIONS
from models.status import OrderStatus
from models.tables import Order
from tasks.adapters import Adapters, directory
from tasks.adapters.mail import Recipient


def recipients(ad: Adapters, s: Session, order: Order) -> dict[str, Recipient]:
    """Everyone a confirmation may go to, by role: head, orderer, support."""
    out: dict[str, Recipient] = {}
    unit = directory.unit(s, order.care_unit_hsa_id)
    head = directory.staff(s, unit.head_hsa_id) if unit and unit.head_hsa_id else None
    if head:
        out["head"] = Recipient("head", head.email)
    orderer = directory.staff(s, order.submitted_by)
    if orderer:
        out["orderer"] = Recipient("orderer", orderer.email)
    queue = ad.mailbox(order.region, "support_queue_email")
    if queue:
        out["support"] = Recipient("support", queue)
    return out


def queue(ad: Adapters, s: Session, order: Order, extra: dict[str, str] | None = None) -> int:
    """Queue the confirmations of the order's status (none for an open order); returns how many were new."""
    status = OrderStatus(order.status)
    wanted = CONFIRMATIONS.get(status, ())
    if not wanted:
        return 0
    everyone = recipients(ad, s, order)
    return ad.mail.enqueue(s, order, status.value, [everyone[r] for r in wanted if r in everyone], extra=extra)
