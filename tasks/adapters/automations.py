"""Prefect automations shipped with the project, created idempotently by name.

- **Missed urgent callback**: fires on every `order.callback.missed` event (emitted by the escalation
  dispatcher, tasks/steps/escalation.py, resource `order.<reference>`), so each missed callback shows in the
  dashboard's automation and event views, linked to the order's run.
- **Order run failed**: fires when a run of an order flow (or of `urgent-order`) fails or crashes.
- **Crash unresponsive order runs**: Prefect's recipe for zombie runs (docs "detect zombie flows"): a run
  that sent a heartbeat and then neither another one nor a final state within three heartbeat periods is
  set to Crashed, so the reconciler starts the order's next run. Prefect 3.8 sends heartbeats every 180 s
  by default (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, at least 30); the embedded default also crashes orphaned
  runs when its serving process starts.

The default action is "do nothing": the automation firing is itself the record the dashboard shows
(`prefect.automation.triggered` / `action.executed` events). With a notification block configured
(`RO_AUTOMATION_NOTIFY_BLOCK=<block-type-slug>/<block-name>`, e.g. `slack-webhook/on-call`), the automations
send a notification through it instead. Templates are single simple expressions (see prefect-3-notes §3).

The monitoring automations (overdue orders, failed monitoring runs) live in tasks/adapters/automations_monitoring.py;
`ensure_all()` and `all_specs()` cover both sets, and are what the CLI and `make run` use.

Embedded default: `make run` (forms/embedded.py) creates them all after the Prefect server is up.
Production, after `prefect deploy --all`, either of:
    restriction-orders automations                     # idempotent: creates or updates by name
    restriction-orders automations --print > automations.json && prefect automation create -f automations.json
The second is `prefect`'s own tool but creates duplicates when run twice; prefer the first.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import StateType
from prefect.events.actions import ActionTypes, ChangeFlowRunState, DoNothing, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from models.routine import ORDER_FLOW_NAMES

log = logging.getLogger(__name__)

MISSED_CALLBACK = "Missed urgent callback"
RUN_FAILED = "Order run failed"
ZOMBIE = "Crash unresponsive order runs"
STALLED_DECISION = "Stored decision not moving"


def _heartbeat_s() -> int:
    from prefect.settings import get_current_settings
    return int(get_current_settings().flows.heartbeat_frequency or 180)
TAG = "restriction-orders"
ORDER_FLOWS = [*ORDER_FLOW_NAMES, "urgent-order"]


def with_action(description: str, block_id: UUID | None) -> str:
    """The description says what the automation does when it fires: the dashboard's Action card of a "do
    nothing" action is empty, so the words are the only place that tells."""
    if block_id is None:
        return (f"{description} Åtgärd: ingen avisering – att automationen utlöses syns under Händelser och i "
                "automationens historik. Sätt RO_AUTOMATION_NOTIFY_BLOCK för att skicka en avisering.")
    return f"{description} Åtgärd: avisering via det inställda notifieringsblocket (RO_AUTOMATION_NOTIFY_BLOCK)."


def _actions(block_id: UUID | None, subject: str, body: str) -> list[ActionTypes]:
    if block_id is None:
        return [DoNothing()]
    return [SendNotification(block_document_id=block_id, subject=subject, body=body)]


def automation_specs(notify_block_id: UUID | None = None) -> list[AutomationCore]:
    """The automations as Prefect models (no personal data: references and event names only)."""
    missed = AutomationCore(
        name=MISSED_CALLBACK, tags=[TAG],
        description=with_action("Brådskande beställning: ingen återuppringning inom tiden. Eskalerad till "
                                "regionens eskaleringskontakt och registrerad som avvikelse (händelse "
                                "order.callback.missed).", notify_block_id),
        trigger=EventTrigger(posture=Posture.Reactive, expect={"order.callback.missed"},
                             match={"prefect.resource.id": "order.*"}, for_each={"prefect.resource.id"},
                             threshold=1),
        actions=_actions(notify_block_id, "Missad återuppringning: {{ event.resource.id }}",
                         "Missad återuppringning för {{ event.resource.id }}: eskalerad, avvikelse registrerad."),
    )
    failed = AutomationCore(
        name=RUN_FAILED, tags=[TAG],
        description=with_action("En körning av ett beställningsflöde (eller urgent-order) misslyckades eller "
                                "kraschade. Husstädningen startar en ny körning för en öppen beställning; titta "
                                "på orsaken i körningens logg.", notify_block_id),
        trigger=EventTrigger(posture=Posture.Reactive,
                             expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                             match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related={"prefect.resource.role": "flow", "prefect.resource.name": ORDER_FLOWS},
                             for_each={"prefect.resource.id"}, threshold=1),
        actions=_actions(notify_block_id, "Körning misslyckades: {{ event.resource.name }}",
                         "Körningen {{ event.resource.name }} misslyckades: {{ event.event }}"),
    )
    beat = _heartbeat_s()
    zombie = AutomationCore(
        name=ZOMBIE, tags=[TAG],
        description="En körning som slutat skicka hjärtslag (maskin eller process död) markeras som kraschad; "
                    "husstädningen startar då en ny körning som fortsätter från beställningsdatabasen. "
                    "Åtgärd: körningens tillstånd sätts till Crashed.",
        trigger=EventTrigger(posture=Posture.Proactive, after={"prefect.flow-run.heartbeat"},
                             expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                                     "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                                     "prefect.flow-run.Crashed", "prefect.flow-run.Suspended",
                                     "prefect.flow-run.Paused"},
                             match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related={"prefect.resource.role": "flow", "prefect.resource.name": ORDER_FLOWS},
                             for_each={"prefect.resource.id"}, threshold=1,
                             within=timedelta(seconds=3 * beat)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"Inga hjärtslag på {3 * beat} sekunder.")],
    )
    stalled = AutomationCore(
        name=STALLED_DECISION, tags=[TAG],
        description=with_action("Ett registrerat beslut har inte flyttat beställningen vidare inom tiden "
                                "(RO_STALLED_DECISION_SECONDS, 2 min): körningen rör sig inte. Händelse "
                                "order.decision.stalled; /healthz säger degraded tills beställningen går vidare.",
                                notify_block_id),
        trigger=EventTrigger(posture=Posture.Reactive, expect={"order.decision.stalled"},
                             match={"prefect.resource.id": "order.*"}, for_each={"prefect.resource.id"},
                             threshold=1),
        actions=_actions(notify_block_id, "Beslut står still: {{ event.resource.id }}",
                         "Ett beslut har inte flyttat {{ event.resource.id }} vidare: se körningen."),
    )
    return [missed, failed, zombie, stalled]


def _comparable(a: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(a.model_dump_json())
    keep = ("name", "description", "enabled", "tags", "trigger", "actions", "actions_on_trigger", "actions_on_resolve")
    out = {k: data.get(k) for k in keep}
    trigger = out.get("trigger")
    if isinstance(trigger, dict):
        trigger.pop("id", None)
        for k in ("expect", "after", "for_each"):  # sets: order does not matter
            if isinstance(trigger.get(k), list):
                trigger[k] = sorted(trigger[k])
    return out


def _block_id(client: Any, spec: str | None) -> UUID | None:
    if not spec:
        return None
    slug, _, name = spec.partition("/")
    doc = client.read_block_document_by_name(name=name, block_type_slug=slug)
    return UUID(str(doc.id))


def ensure_automations(notify_block: str | None = None) -> dict[str, str]:
    """Create the project's automations, or bring them up to date, by name; returns name → id.
    Safe to call on every start. Raises when the Prefect API cannot be reached."""
    from prefect.client.orchestration import get_client
    notify_block = notify_block if notify_block is not None else os.environ.get("RO_AUTOMATION_NOTIFY_BLOCK", "")
    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        block_id = _block_id(client, notify_block)
        for spec in automation_specs(block_id):
            existing = client.read_automations_by_name(spec.name)
            if not existing:
                out[spec.name] = str(client.create_automation(spec))
                log.info("automation %r created", spec.name)
                continue
            first, *dupes = sorted(existing, key=lambda a: str(a.id))  # deterministic: the same one every time
            if _comparable(first) != _comparable(spec):
                client.update_automation(first.id, spec)
                log.info("automation %r updated", spec.name)
            for d in dupes:  # `prefect automation create` run twice: keep one
                if TAG in (d.tags or []):
                    client.delete_automation(d.id)
            out[spec.name] = str(first.id)
    return out


def all_specs(notify_block_id: UUID | None = None) -> list[AutomationCore]:
    """Every automation the project ships: the urgent/run ones above and the monitoring ones."""
    from tasks.adapters.automations_monitoring import definitions
    return automation_specs(notify_block_id) + definitions(notify_block_id)


def ensure_all(notify_block: str | None = None) -> dict[str, str]:
    """Create or update every shipped automation by name; returns name -> id. Raises when the Prefect API
    cannot be reached (an operator running the CLI must see that, not an empty list)."""
    from tasks.adapters.automations_monitoring import ensure_monitoring_automations
    return ensure_automations(notify_block) | ensure_monitoring_automations(notify_block, strict=True)


def specs_json(notify_block_id: UUID | None = None) -> str:
    """Every shipped automation as a file for `prefect automation create --from-file automations.json`."""
    return json.dumps({"automations": [json.loads(a.model_dump_json()) for a in all_specs(notify_block_id)]},
                      indent=2, ensure_ascii=False)


if __name__ == "__main__":
    print(json.dumps(ensure_all(), indent=2))
