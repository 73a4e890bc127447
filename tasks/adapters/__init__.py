"""The adapters: everything that talks to the world outside the routine (the orders database, SMTP, the
1177 execution system, the Prefect engine and its events, paging channels, the clock, the region settings).

`Adapters` bundles one of each. The composition root (flows/bootstrap.py) builds it once per process, for
the embedded default or production, or with fakes for the routine's unit tests, and hands it to the
service code; nothing in tasks/ looks an adapter or a setting up by itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from models.clock import Clock
from models.regions import RegionSettings

if TYPE_CHECKING:
    from tasks.adapters.database import Database
    from tasks.adapters.engine import Engine
    from tasks.adapters.events import Events
    from tasks.adapters.gateway import ConfiguredGateway
    from tasks.adapters.mail import Outbox
    from tasks.adapters.notifiers import Notifier
    from tasks.adapters.settings import Settings


@dataclass(eq=False)
class Adapters:
    settings: Settings
    db: Database
    regions: Mapping[str, RegionSettings]
    clock: Clock
    mail: Outbox
    gateway: ConfiguredGateway
    engine: Engine
    events: Events
    notifiers: Sequence[Notifier] = field(default_factory=list)   # paging channels beside the email

    def region(self, code: str) -> RegionSettings:
        try:
            return self.regions[code]
        except KeyError:
            raise KeyError(f"unknown region {code!r}; configured: {', '.join(sorted(self.regions))}") from None

    def now(self) -> datetime:
        """The clock's now, in UTC (as the database stores times)."""
        return self.clock.now().astimezone(UTC)

    def mailbox(self, region: str, name: str) -> str | None:
        """A region's mailbox (on_call_email, escalation_email, support_queue_email): its sourced address, in the
        embedded demo its `.invalid` stand-in; None when it is not set (a copy beside a person is left out)."""
        from tasks.adapters import mailboxes
        return mailboxes.optional(self.region(region), name, demo=self.settings.demo)

    def required_mailbox(self, region: str, name: str) -> str:
        """The same where the message is the point (a page, an escalation): MailboxUnset when it is not set, so
        the caller's retry keeps trying until the region's settings are filled in."""
        from tasks.adapters import mailboxes
        return mailboxes.required(self.region(region), name, demo=self.settings.demo)
