"""The order's card in the Prefect dashboard: a markdown artifact keyed `order-<reference>`, one version
per step, so a waiting or cancelled order shows where it stands, not only a finished one.

Published by the routine after it receives the order, after each decision it records and at the end
(tasks/steps/stages.publish_timeline), and by the cancel command, which has no run context: the artifact is
then created through the API and linked to the order's (cancelled) run.

Only what the dashboard may show: reference, type, region, status, the stage plan with its rule codes,
and the audit trail as times, HSA-ids, action codes and statuses. Never a personal identity number, a
name or free text (a reason, a rationale, a note), which stay in the orders database.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from models.schemas import ORDER_TYPE_LABELS_SV
from models.status import LABELS_SV, OrderStatus
from models.tables import AuditEvent, Order
from tasks.adapters.database import Database

if TYPE_CHECKING:
    from tasks.adapters import Adapters

log = logging.getLogger(__name__)
SKIPPED_ACTIONS = frozenset({"order_read"})  # reads are audited for the patient's log extract, not the card


def artifact_key(reference: str) -> str:
    return f"order-{reference.strip().lower()}"


def order_url(app_base_url: str, reference: str) -> str:
    """The order's page in the app (its reference only: the page asks who is reading)."""
    return f"{app_base_url.rstrip('/')}/bestallningar/{reference.strip().upper()}"


def markdown(db: Database, reference: str, app_base_url: str = "") -> tuple[str, str | None]:
    """The card's markdown and the order's flow run id. With the app's address the card links back to the
    order's page, where people decide (a resume in the Prefect UI decides nothing)."""
    with db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == reference.strip().upper()))
        if order is None:
            raise LookupError(reference)
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == order.reference)
                                .order_by(AuditEvent.id)))
        lines = [f"# {order.reference}", "",
                 f"**{ORDER_TYPE_LABELS_SV[order.order_type]}** · {order.region} · "
                 f"{'brådskande' if order.urgent else 'ej brådskande'} · "
                 f"status **{LABELS_SV[OrderStatus(order.status)]}** (`{order.status}`)", "",
                 *([f"[Öppna beställningen i appen]({order_url(app_base_url, order.reference)})", ""]
                   if app_base_url else []),
                 "| Steg | Krävs | Regel |", "|---|---|---|"]
        for name, st in (order.stage_plan or {}).items():
            lines.append(f"| {name} | {'ja' if st.get('required') else 'nej'} | {st.get('rule')} |")
        lines += ["", "| Tid (UTC) | Vem | Händelse | Från | Till |", "|---|---|---|---|---|"]
        for e in events:
            if e.action in SKIPPED_ACTIONS:
                continue
            lines.append(f"| {e.at:%Y-%m-%d %H:%M:%S} | {e.actor} | {e.action} | {e.from_status or ''} "
                         f"| {e.to_status or ''} |")
        return "\n".join(lines), order.flow_run_id


def publish(ad: Adapters, reference: str) -> bool:
    """Create the next version of the order's card. Best effort: the card is a convenience for the
    dashboard, so a hiccup is logged and never fails the step (or the command) that called it."""
    try:
        text, order_run = markdown(ad.db, reference, ad.settings.app_base_url)
        ad.engine.publish_card(artifact_key(reference), text, f"Tidslinje för {reference.strip().upper()}",
                               order_run)
    except Exception as exc:
        log.warning("timeline of %s not published: %s", reference, type(exc).__name__)
        return False
    return True
