"""Prefect automations shipped with the project, for the administrators who watch the dashboard.

`ensure_monitoring_automations()` creates them, or brings existing ones (found by name) back to this
definition, so calling it on every start is safe. The automations:

- overdue orders: the SLA monitor's `order.overdue` event (once per breach);
- failed monitoring runs: `sla-monitor`, `review-reminders`, `housekeeping` or `audit-verify` failed or
  crashed (nobody is reminded, or the audit log is not verified, while they fail);
- the audit log's hash chain broken: the `audit-verify` flow's `audit.chain.broken` event (first broken row's
  id and position, the problem's code).

Failed order runs and missed urgent callbacks are already covered by `tasks/automations.py`
("Order run failed", "Missed urgent callback" on `order.callback.missed`); they are not repeated here, so
one failure never notifies twice.

Action: a notification through a Prefect notification block when one is named (`notify_block`, or the
environment variable RO_AUTOMATION_NOTIFY_BLOCK=<block-type-slug>/<block-name>, the same one as
tasks/automations.py; e.g. a Slack/Teams webhook block made by an administrator), otherwise "do nothing": the automation still records `prefect.automation.triggered` events,
which the dashboard's event feed and automations page show. Message templates name the order reference or
the flow run only, never personal data.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.actions import DoNothing, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from models.audit_chain import EVENT_BROKEN, RESOURCE_ID
from models.sla import EVENT_OVERDUE
from tasks.adapters.automations import with_action

log = logging.getLogger(__name__)

MONITORING_FLOWS = ("sla-monitor", "review-reminders", "housekeeping", "audit-verify")
FAILED_RUN_EVENTS = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
TAG = "restriction-orders"
OVERDUE_ORDERS = "Overdue order"
MONITORING_FAILED = "Monitoring run failed"
AUDIT_CHAIN_BROKEN = "Audit chain broken"


def _actions(notify_block_id: UUID | None, subject: str, body: str) -> list[Any]:
    if notify_block_id is None:
        return [DoNothing()]
    return [SendNotification(block_document_id=notify_block_id, subject=subject, body=body)]


def definitions(notify_block_id: UUID | None = None) -> list[AutomationCore]:
    notify = notify_block_id
    return [
        AutomationCore(
            name=OVERDUE_ORDERS, enabled=True, tags=[TAG],
            description=with_action(
                "En beställning passerade sin klar-senast-tid (en gång per överskriden tid). "
                "Verksamhetschefen (brådskande: supportkön) och supportkön har fått e-post.", notify),
            trigger=EventTrigger(expect={EVENT_OVERDUE}, match={"prefect.resource.id": "order.*"},
                                 for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
                                 within=timedelta(0)),
            actions=_actions(notify, "Försenad beställning {{ event.resource.name }}",
                             "Beställningen {{ event.resource.name }} är försenad: se den röda listan i appen "
                             "(/admin).")),
        AutomationCore(
            name=MONITORING_FAILED, enabled=True, tags=[TAG],
            description=with_action(
                "Bevakningen (sla-monitor, review-reminders eller housekeeping) misslyckades: inga "
                "påminnelser skickas förrän den fungerar igen.", notify),
            trigger=EventTrigger(
                expect=set(FAILED_RUN_EVENTS), match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(MONITORING_FLOWS)},
                for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=timedelta(0)),
            actions=_actions(notify, "Bevakningen misslyckades: {{ event.resource.name }}",
                             "Körningen {{ event.resource.name }} slutade med {{ event.event }}.")),
        AutomationCore(
            name=AUDIT_CHAIN_BROKEN, enabled=True, tags=[TAG],
            description=with_action(
                "Granskningsloggens hashkedja är bruten: en rad har ändrats, tagits bort eller lagts in "
                "vid sidan av appen. Kör `restriction-orders audit verify` för alla fel; "
                "administratörsöversikten visar den första brutna raden.", notify),
            trigger=EventTrigger(expect={EVENT_BROKEN}, match={"prefect.resource.id": RESOURCE_ID},
                                 posture=Posture.Reactive, threshold=1, within=timedelta(0)),
            actions=_actions(notify, "Granskningsloggens kedja är bruten",
                             "Första brutna rad: id {{ event.payload.row_id }} ({{ event.payload.problem }}). "
                             "Kör restriction-orders audit verify.")),
    ]


def _block_id(client: Any, spec: str) -> UUID | None:
    """`<block-type-slug>/<block-name>` (as RO_AUTOMATION_NOTIFY_BLOCK in tasks/automations.py) -> its id."""
    if not spec:
        return None
    slug, _, name = spec.partition("/")
    return UUID(str(client.read_block_document_by_name(name=name, block_type_slug=slug).id))


def ensure_monitoring_automations(notify_block: str | None = None, *, strict: bool = False) -> dict[str, str]:
    """Create or update the automations by name; returns {name: id}. Needs PREFECT_API_URL.

    `notify_block` is `<block-type-slug>/<block-name>` of a notification block (default: the environment
    variable RO_AUTOMATION_NOTIFY_BLOCK, shared with tasks/automations.py). With strict=False (for
    `make run`) a Prefect API error is logged and {} returned instead of raised."""
    spec_name = notify_block if notify_block is not None else os.environ.get("RO_AUTOMATION_NOTIFY_BLOCK", "")
    out: dict[str, str] = {}
    try:
        with get_client(sync_client=True) as client:
            for spec in definitions(_block_id(client, spec_name)):
                existing = client.read_automations_by_name(spec.name)
                if not existing:
                    out[spec.name] = str(client.create_automation(spec))
                    continue
                keep, *duplicates = sorted(existing, key=lambda a: str(a.id))  # the same one every time
                client.update_automation(keep.id, spec)
                for extra in duplicates:  # two starts raced: keep one (only ours)
                    if TAG in (extra.tags or []):
                        client.delete_automation(extra.id)
                out[spec.name] = str(keep.id)
    except Exception as exc:
        if strict:
            raise
        log.warning("monitoring automations not ensured: %s", type(exc).__name__)
        return {}
    return out
