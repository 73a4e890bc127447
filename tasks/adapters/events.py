"""Events for the Prefect dashboard and its automations: order references and times only, never personal data.

`PrefectEvents` hands them to Prefect's events worker (queued, never awaited, never raises): escalations
and failures must not wait for, or fail because of, the Prefect API. `RecordedEvents` keeps them in a list,
for the routine's unit tests.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)


def stable_id(*parts: str) -> uuid.UUID:
    """An event id derived from what the event is about: sent twice (a re-run), Prefect stores it once."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "urn:restriction-orders:" + ":".join(parts))


def order_resource(reference: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": f"order.{reference}", "prefect.resource.name": reference, **labels}


def run_related(flow_run_id: str | None) -> list[dict[str, str]] | None:
    if not flow_run_id:
        return None
    return [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]


class Events(Protocol):
    def emit(self, event: str, resource: dict[str, str], *, payload: dict[str, Any] | None = None,
             related: list[dict[str, str]] | None = None, id: uuid.UUID | None = None,
             occurred: datetime | None = None) -> None: ...


class PrefectEvents:
    def emit(self, event: str, resource: dict[str, str], *, payload: dict[str, Any] | None = None,
             related: list[dict[str, str]] | None = None, id: uuid.UUID | None = None,
             occurred: datetime | None = None) -> None:
        try:
            from prefect.events import emit_event
            kwargs: dict[str, Any] = {"event": event, "resource": resource}
            for k, v in (("payload", payload), ("related", related), ("id", id), ("occurred", occurred)):
                if v is not None:
                    kwargs[k] = v
            emit_event(**kwargs)
        except Exception as exc:
            log.warning("could not emit %s for %s: %s", event, resource.get("prefect.resource.name", "?"),
                        type(exc).__name__)


@dataclass
class RecordedEvents:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, event: str, resource: dict[str, str], *, payload: dict[str, Any] | None = None,
             related: list[dict[str, str]] | None = None, id: uuid.UUID | None = None,
             occurred: datetime | None = None) -> None:
        self.sent.append({"event": event, "resource": resource, "payload": payload or {}, "related": related,
                          "id": id, "occurred": occurred})
