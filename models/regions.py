"""Per-region settings, read from a TOML file so that adding a region is configuration, not code.

The file is `models/regions.toml` unless the environment variable REGIONS_FILE names another one.

Every contact value people see (phones, the postal route, mailboxes, on-call hours, the callback promise)
is written with its source: `support_phone = {value = "0480-840 38", source = "SEED-1: ..."}`. A value
without a source is *unset*: pages, PDFs and emails show `UNSET_SV` instead, never a number that nobody
vouched for. Mailboxes may also carry a `demo` stand-in (an `.invalid` address) that only the embedded demo
uses, so that its pages go to the local SMTP sink.

Urgent coverage (`[[regions.urgent_coverage]]`, models/coverage.py) says who receives urgent orders at every
minute of the week; a file with a gap or an overlap is refused when it is loaded.
"""

from __future__ import annotations

import os
import tomllib
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from models.calendar import WorkingHours
from models.coverage import CoverageWindow, Receiver, always_on_call, coverage_problems, on_call_hours

DEFAULT_FILE = Path(__file__).with_name("regions.toml")
UNSET_SV = "Ej inställt – kontakta regionens 1177-förvaltning"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Digits with the spaces and hyphens Swedish numbers are written with ("010-103 6000", "0480-840 38").
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 -]*[0-9]$")]
Email = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
# The region promises no callback: its urgent line is answered at once (Östergötland, SEED-0).
NO_PROMISE = "none"
CallbackPromise = PositiveInt | Literal["none"]
Route = Annotated[list[Text], Field(min_length=1)]  # internal-mail address, one line each

T = TypeVar("T")


class Sourced(BaseModel, Generic[T]):
    """A value people see and where it comes from ("SEED-1: …", or the region's own decision with its date).

    `value` without `source` – or a bare value written without the table – is unset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: T | None = None
    source: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_value(cls, data: Any) -> Any:
        # `support_phone = "070-…"` names no source: kept (so `unsourced()` can report it) but unset.
        return data if isinstance(data, dict) else {"value": data}

    @property
    def is_set(self) -> bool:
        return self.value is not None and self.source is not None

    @property
    def shown(self) -> T | None:
        """The value if it has a source, else None (shown as UNSET_SV)."""
        return self.value if self.is_set else None


class Mailbox(Sourced[Email]):
    """A mailbox the system sends to. `demo` is the embedded demo's stand-in, never a real address."""

    demo: Email | None = None

    @field_validator("demo")
    @classmethod
    def _demo_reaches_nobody(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith(".invalid"):
            raise ValueError(f"demo address {v!r} must be at an .invalid domain, so the demo never mails anyone")
        return v

    def address(self, *, demo: bool) -> str | None:
        """Where to send: the sourced address; in the embedded demo, else the demo stand-in; else None."""
        return self.shown or (self.demo if demo else None)


CONTACT_FIELDS = ("support_phone", "support_option", "postal_route", "advice_phone", "callback_minutes",
                  "on_call_email", "escalation_email", "support_queue_email")
# A region may have no phone menu choice and no advice line; everything else a running region needs.
OPTIONAL_FIELDS = ("support_option", "advice_phone")
MAILBOX_OF: dict[str, str] = {"support": "support_queue_email", "on_call": "on_call_email"}


class RegionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    name: Text
    support_phone: Sourced[Phone] = Sourced[Phone]()
    support_option: Sourced[Text] = Sourced[Text]()   # the phone menu choice, "knappval 2"
    postal_route: Sourced[Route] = Sourced[Route]()
    advice_phone: Sourced[Phone] = Sourced[Phone]()     # questions about the e-services, not orders
    # Minutes within which the orderer of an urgent order is called back, as promised to them; "none" when
    # the region's urgent line is answered at once and nobody is called back.
    callback_minutes: Sourced[CallbackPromise] = Sourced[CallbackPromise]()
    on_call_email: Mailbox = Mailbox()
    escalation_email: Mailbox = Mailbox()
    support_queue_email: Mailbox = Mailbox()
    # Office hours for non-urgent handling (due times, bakjour approval out of hours); not shown to people.
    hours: WorkingHours = WorkingHours()
    urgent_coverage: list[CoverageWindow] = Field(min_length=1)
    # The system's own deadline for an urgent order's first contact when the region promises no callback time
    # (or its promise is not set): the callback clock and its escalation run on it. Product decision (BRIEF:
    # "must call back within 30 minutes"); never shown to the orderer as a promise.
    response_minutes: PositiveInt = 30
    review_interval_days: int = Field(default=365, gt=0)
    # An urgent order's execution target: done within this many hours of submission (its `due_at`, kept after
    # the callback; the red list and reminders run on it). Product decision (issue 13), not a contact value.
    urgent_target_hours: PositiveInt = 4
    # Nobody has acted on an urgent order's human stage (assessment, approval, manual execution) this long
    # after it started waiting: escalated once, to the support queue and the on-call manager, with a deviation.
    escalation_minutes: PositiveInt = 30
    # When the people who decide non-urgent orders get their digest of what waits for them: working days,
    # Stockholm time.
    digest_times: list[time] = Field(default_factory=lambda: [time(8, 0), time(13, 0)], min_length=1)
    # The region's on-call manager (jourhavande chef): the last step of an unattended urgent stage's
    # escalation. Unset: the region's escalation contact is used instead.
    on_call_manager_email: Mailbox = Mailbox()

    @model_validator(mode="after")
    def _covered(self) -> RegionSettings:
        problems = coverage_problems(self.urgent_coverage)
        if problems:
            raise ValueError(f"urgent_coverage of region {self.code!r}: " + "; ".join(problems))
        return self

    # --- what people are told ------------------------------------------------------------------------

    @property
    def promised_callback_minutes(self) -> int | None:
        """The promised callback time in minutes; None when no promise is made or none is set."""
        v = self.callback_minutes.shown
        return v if isinstance(v, int) else None

    @property
    def makes_no_callback_promise(self) -> bool:
        """The region's source says urgent calls are answered at once: nobody waits for a callback."""
        return self.callback_minutes.shown == NO_PROMISE

    @property
    def callback_deadline_minutes(self) -> int:
        """When the callback clock of an urgent order runs out: the promise, else `response_minutes`."""
        return self.promised_callback_minutes or self.response_minutes

    @property
    def on_call_hours(self) -> str | None:
        """'17:00–07:00' or 'dygnet runt' when the on-call window has a source; None: not set."""
        return on_call_hours(self.urgent_coverage)

    @property
    def urgent_line_always_open(self) -> bool:
        return always_on_call(self.urgent_coverage)

    def mailbox_for(self, receiver: Receiver) -> Mailbox:
        mailbox: Mailbox = getattr(self, MAILBOX_OF[receiver])
        return mailbox

    def unset(self) -> list[str]:
        """The contact values a running region needs that are not set (no value, or no source): `doctor`'s list."""
        out = [name for name in CONTACT_FIELDS if name not in OPTIONAL_FIELDS and not getattr(self, name).is_set]
        if self.on_call_hours is None and not self.urgent_line_always_open:
            out.append("urgent_coverage (on-call hours)")
        return out

    def unsourced(self) -> list[str]:
        """Values written without a source: ignored (unset), which an operator should hear about."""
        return [name for name in CONTACT_FIELDS
                if getattr(self, name).value is not None and getattr(self, name).source is None]


class Regions(BaseModel):
    """The whole file: `[[regions]]` tables, one per region."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: list[RegionSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_codes(self) -> Regions:
        codes = [r.code for r in self.regions]
        duplicates = sorted({c for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"region codes appear more than once: {', '.join(duplicates)}")
        return self

    def by_code(self) -> dict[str, RegionSettings]:
        return {r.code: r for r in self.regions}


def _configured_path(path: Path | None) -> Path:
    if path is not None:
        return path
    env = os.environ.get("REGIONS_FILE")
    return Path(env) if env else DEFAULT_FILE


@lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, RegionSettings]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        return Regions.model_validate(data).by_code()
    except ValidationError as exc:
        raise ValueError(f"invalid region settings in {path}:\n{exc}") from exc


def load_regions(path: Path | None = None) -> dict[str, RegionSettings]:
    """Regions by code, from `path`, else $REGIONS_FILE, else models/regions.toml (each file read once)."""
    # A copy, so a caller that edits the dict cannot change what everyone else sees.
    return dict(_load(_configured_path(path).resolve()))


def region(code: str) -> RegionSettings:
    regions = load_regions()
    try:
        return regions[code]
    except KeyError:
        raise KeyError(
            f"unknown region {code!r}; configured in {_configured_path(None)}: {', '.join(sorted(regions))}"
        ) from None
