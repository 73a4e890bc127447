"""Who receives an urgent order at a given minute: a region's office-hours support or its on-call.

A region lists windows of wall-clock time (Europe/Stockholm), each for working days, non-working days or
every day. A window whose end is not after its start wraps around midnight *within the same day*: working
days 17:00–07:00 cover 17:00–24:00 and 00:00–07:00 of every working day, so the early morning of a working
day is covered whatever the day before was (Friday 17:00 → Monday 07:00 is one on-call stretch). A window
from 00:00 to 00:00 is the whole day.

Because every day is either a working day or not, checking each kind of day minute by minute checks every
minute of every week, holidays and both DST nights included (the repeated and the skipped hour are wall-clock
minutes like any other). Settings with a gap or an overlap are refused when they are loaded.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from models.calendar import is_working_day, local

Receiver = Literal["support", "on_call"]
DayKind = Literal["working", "non_working", "every"]
MINUTES_PER_DAY = 24 * 60
DAY_LABELS: dict[str, str] = {"working": "working days", "non_working": "non-working days"}


class CoverageWindow(BaseModel):
    """`receiver` takes urgent orders on `days` from `start` until `end` (Stockholm wall-clock time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    receiver: Receiver
    days: DayKind
    start: time
    end: time
    # Where the window comes from. A window without one still routes pages (someone must get them), but its
    # hours are not shown to people as the region's on-call hours.
    source: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] | None = None

    @field_validator("start", "end")
    @classmethod
    def _whole_minutes(cls, v: time) -> time:
        if v.second or v.microsecond or v.tzinfo is not None:
            raise ValueError(f"{v.isoformat()}: give whole minutes of local time (HH:MM)")
        return v

    def applies_to(self, working: bool) -> bool:
        return self.days == "every" or (self.days == "working") == working

    def minutes(self) -> range | tuple[range, range]:
        """The minutes of the day (0–1439) the window covers."""
        a = self.start.hour * 60 + self.start.minute
        b = self.end.hour * 60 + self.end.minute
        if a < b:
            return range(a, b)
        return range(a, MINUTES_PER_DAY), range(0, b)  # wraps around midnight (a == b: the whole day)

    def covers_minute(self, minute: int) -> bool:
        spans = self.minutes()
        return any(minute in r for r in (spans if isinstance(spans, tuple) else (spans,)))

    @property
    def all_day(self) -> bool:
        return self.start == self.end

    def hours_text(self) -> str:
        """'17:00–07:00', or 'dygnet runt'."""
        return "dygnet runt" if self.all_day else f"{self.start:%H:%M}–{self.end:%H:%M}"


def _spans(minutes: Iterable[int]) -> list[str]:
    """[420, 421, ..., 479, 990, ...] -> ['07:00–08:00', '16:30–17:00']."""
    out: list[str] = []
    run: list[int] = []
    for m in sorted(minutes):
        if run and m != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(m)
    if run:
        out.append(_span(run))
    return out


def _span(run: list[int]) -> str:
    end = run[-1] + 1
    return f"{run[0] // 60:02d}:{run[0] % 60:02d}–{end // 60 % 24:02d}:{end % 60:02d}"


def coverage_problems(windows: Sequence[CoverageWindow]) -> list[str]:
    """Every gap (a minute with no receiver) and overlap (two receivers), worded for the operator who edits
    the settings file; empty when every minute of both kinds of day has exactly one receiver."""
    problems: list[str] = []
    for working in (True, False):
        kind = DAY_LABELS["working" if working else "non_working"]
        mine = [w for w in windows if w.applies_to(working)]
        holders = [[w for w in mine if w.covers_minute(m)] for m in range(MINUTES_PER_DAY)]
        gaps = [m for m, h in enumerate(holders) if not h]
        if gaps:
            problems.append(f"no receiver of urgent orders on {kind} {', '.join(_spans(gaps))} "
                            "(every minute of the week needs office-hours support or on-call)")
        doubles = [m for m, h in enumerate(holders) if len(h) > 1]
        if doubles:
            who = sorted({w.receiver for m in doubles for w in holders[m]})
            problems.append(f"more than one receiver ({', '.join(who)}) on {kind} {', '.join(_spans(doubles))}")
    return problems


def receiver_at(at: datetime, windows: Sequence[CoverageWindow]) -> Receiver:
    """Who receives an urgent order whose clock starts at `at` (any time zone; judged in Stockholm)."""
    t = local(at)
    working = is_working_day(t.date())
    minute = t.hour * 60 + t.minute
    for w in windows:
        if w.applies_to(working) and w.covers_minute(minute):
            return w.receiver
    # Settings are checked when loaded, so this only happens with windows that were never validated.
    raise LookupError(f"no receiver of urgent orders at {t.isoformat()}")


def on_call_hours(windows: Sequence[CoverageWindow]) -> str | None:
    """The on-call hours people are told ('17:00–07:00', 'dygnet runt'), from the on-call window of working
    days; None when that window has no source (or there is none): then the hours are not set."""
    found = [w for w in windows if w.receiver == "on_call" and w.applies_to(True)]
    if len(found) != 1 or found[0].source is None:
        return None
    return found[0].hours_text()


def always_on_call(windows: Sequence[CoverageWindow]) -> bool:
    """The urgent line is open around the clock on every day (Östergötland)."""
    return any(w.receiver == "on_call" and w.days == "every" and w.all_day for w in windows)
