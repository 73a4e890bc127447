"""The emails an order's final status calls for (models.routine.CONFIRMATIONS): to the head of department
and the orderer when it is completed, to the orderer when it is rejected or cancelled, to the orderer and
the region's support queue when the registry refused it.

The completed order's email says what was done, who assessed and approved it (role and HSA-id) and the review
date the head of department answers for (issue 13 item 7): still no personal numbers and no free text.

Queued in the transaction that sets the status, so a crash right after cannot lose them; queueing again
adds nothing (tasks/adapters/mail.py: one Message-ID per recipient and event).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from models import swedish
from models.routine import CONFIRMATIONS, ROLE_LABELS_SV, STAGES, Stage, StagePlan
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


# What was done, in the words of the paper form (no personal numbers: a guardian is "the guardian").
DONE_SV = {"seal_or_lock": {"seal_journal": "1177 journal förseglad", "lock_login": "Inloggningen till 1177 e-tjänster låst"},
           "restore_access": {"seal_journal": "Förseglingen av 1177 journal bruten",
                              "lock_login": "Inloggningen till 1177 e-tjänster upplåst"}}


def actions_done(order: Order) -> str:
    """What the completed order did, without personal data."""
    if order.order_type in DONE_SV:
        return "; ".join(DONE_SV[order.order_type].get(a, a) for a in order.actions or [])
    if order.order_type == "block_guardian":
        return "Vårdnadshavarens direktåtkomst till barnets journal och e-tjänster borttagen"
    who = "barnet självt" if order.minor_recipient == "minor" else "vårdnadshavare"
    return f"Tillgång till den minderåriges journal {'given' if order.minor_grant else 'borttagen'} för {who}"


def _decided(s: Session, order: Order, stage: Stage, plan: StagePlan) -> str:
    """'Bakjour (DEMO-…-BAKJOUR), 24 november 2026 kl. 23.05' for a decided stage, else why it was not needed."""
    d = next((x for x in order.decisions if x.stage == stage.value and x.state == "accepted"), None)
    planned = plan.stages.get(stage)
    if d is None:
        return planned.reason if planned and not planned.required else "–"
    person = directory.staff(s, d.decided_by)
    role = planned.role if planned and planned.role else None
    if role is None or (person is not None and role not in person.roles):
        role = next((r for r in STAGES[stage].roles if person is not None and r in person.roles), STAGES[stage].roles[0])
    return f"{ROLE_LABELS_SV.get(role, role)} ({d.decided_by}), {swedish.when(d.created_at)}"


def completed_facts(s: Session, order: Order) -> dict[str, str]:
    """For the completed order's confirmation: what was done, who assessed and approved (role and HSA-id),
    who executed, and the review date the head of department answers for. No personal numbers, no free text."""
    plan = StagePlan.from_json(order.stage_plan)
    executed = next((x for x in order.decisions if x.stage == "execution" and x.state == "accepted"), None)
    return {"actions_done": actions_done(order),
            "assessed_by": _decided(s, order, Stage.HARM_ASSESSMENT, plan),
            "approved_by": _decided(s, order, Stage.APPROVAL, plan),
            "executed_by": (f"{ROLE_LABELS_SV['account_admin']} ({executed.decided_by})" if executed
                            else "Automatiskt i 1177:s administrationsverktyg"),
            "review_date": swedish.day(order.review_due_on) if order.review_due_on else ""}


def queue(ad: Adapters, s: Session, order: Order, extra: dict[str, str] | None = None) -> int:
    """Queue the confirmations of the order's status (none for an open order); returns how many were new."""
    status = OrderStatus(order.status)
    wanted = CONFIRMATIONS.get(status, ())
    if not wanted:
        return 0
    everyone = recipients(ad, s, order)
    if status == OrderStatus.COMPLETED:
        extra = {**completed_facts(s, order), **(extra or {})}
    return ad.mail.enqueue(s, order, status.value, [everyone[r] for r in wanted if r in everyone], extra=extra)
