"""The composition root: builds the adapters once and hands them to the service code.

`build()` makes them for the embedded default or production from the settings (the environment): the
orders database, the outbox and its SMTP server, the execution gateway, the Prefect engine and its events,
the paging webhook, the system clock and the region settings. Tests build them with fakes where the world
cannot run here (`in_process()`: the routine without a Prefect server), or with any adapter replaced.

Entry points that Prefect calls (the flows) cannot be handed anything, so they take this process's
adapters from `process_adapters()`, made once from the environment. Everything else gets them passed in:
the app (`forms.app.create_app(ad)`), the CLI, the serving loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import cast

from models.clock import Clock, SystemClock
from models.regions import RegionSettings, load_regions
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.engine import Engine, PrefectEngine
from tasks.adapters.events import Events, PrefectEvents
from tasks.adapters.gateway import ConfiguredGateway
from tasks.adapters.mail import Outbox, SmtpServer
from tasks.adapters.notifiers import Notifier, WebhookNotifier
from tasks.adapters.settings import Settings


def build(settings: Settings | None = None, *, db: Database | None = None, engine: Engine | None = None,
          events: Events | None = None, clock: Clock | None = None, gateway: ConfiguredGateway | None = None,
          notifiers: Sequence[Notifier] | None = None,
          regions: Mapping[str, RegionSettings] | None = None) -> Adapters:
    settings = settings or Settings()
    db = db or Database(settings.orders_db_url)
    if notifiers is None:
        notifiers = [WebhookNotifier(settings.paging_webhook_url, settings.paging_webhook_token,
                                     settings.paging_webhook_timeout)] if settings.paging_webhook_url else []
    clock = clock or SystemClock()
    return Adapters(
        settings=settings, db=db, regions=regions if regions is not None else load_regions(), clock=clock,
        mail=Outbox(db, SmtpServer(settings.smtp_host, settings.smtp_port, settings.smtp_from, settings.smtp_timeout),
                    settings.app_base_url, clock),
        gateway=gateway or ConfiguredGateway(settings.gateway, settings.gateway_down_flag),
        engine=engine or PrefectEngine(), events=events or PrefectEvents(), notifiers=list(notifiers))


def in_process(settings: Settings | None = None, **replace: object) -> Adapters:
    """The routine without a Prefect server: order runs execute in this process when they are started or
    resumed (flows/inprocess.py), and events are recorded in a list. For unit tests of the routine."""
    from flows.inprocess import InProcessEngine
    from tasks.adapters.events import RecordedEvents
    engine = replace.pop("engine", None) or InProcessEngine()
    events = replace.pop("events", None) or RecordedEvents()
    ad = build(settings, engine=engine, events=events, **replace)  # type: ignore[arg-type]
    if isinstance(engine, InProcessEngine):
        engine.bind(ad)
    return ad


@lru_cache(maxsize=1)
def process_adapters() -> Adapters:
    """This process's adapters, from the environment: for the flows, which Prefect calls."""
    return build()


def adapters_at(now: datetime | None) -> tuple[Adapters, datetime]:
    """This process's adapters and the time a scheduled flow works at: `now` for tests and reruns, else the
    adapters' clock."""
    ad = process_adapters()
    return ad, now or ad.now()


def passed(ad: Adapters) -> Adapters:
    """The adapters as a task's argument: handed over as they are, not walked through and rebuilt like a
    task's data (Prefect's `quote`); the task receives the object itself."""
    from prefect.utilities.annotations import quote
    return cast(Adapters, quote(ad))
