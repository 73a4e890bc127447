"""Time rules: Europe/Stockholm, working days, office hours, due times.

Pure functions, no I/O. Every function takes timezone-aware datetimes and judges them by Stockholm wall-clock
time; naive datetimes are refused rather than guessed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

import holidays
from pydantic import BaseModel, ConfigDict, model_validator

from models.clock import STOCKHOLM

# Public holidays plus midsummer, Christmas and New Year's Eve, which semesterlagen 7 § equates with Sundays.
# holidays 0.109 keeps the eves in "de_facto"; older releases put them in the default set (version pinned).
_HOLIDAY_CATEGORIES = ("public", "de_facto")


class WorkingHours(BaseModel):
    """A region's office hours for non-urgent handling (Stockholm local time). Who takes urgent orders at
    which minute is the region's urgent coverage (models/coverage.py), not these hours."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    office_start: time = time(8, 0)
    office_end: time = time(16, 30)

    @model_validator(mode="after")
    def _consistent(self) -> WorkingHours:
        if not self.office_start < self.office_end:
            raise ValueError(f"office_start {self.office_start} must be before office_end {self.office_end}")
        return self


def local(at: datetime) -> datetime:
    """`at` as Europe/Stockholm time."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: give a timezone")
    return at.astimezone(STOCKHOLM)


@lru_cache(maxsize=32)
def _non_working_dates(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("SE", years=year, categories=_HOLIDAY_CATEGORIES))


def is_working_day(d: date) -> bool:
    """Monday–Friday and neither a public holiday nor midsummer, Christmas or New Year's Eve."""
    if isinstance(d, datetime):
        # A datetime never equals a date, so the holiday lookup would silently miss.
        raise TypeError("is_working_day takes a date; use local(at).date()")
    return d.weekday() < 5 and d not in _non_working_dates(d.year)


def next_working_day(d: date) -> date:
    """The first working day strictly after `d`."""
    d += timedelta(days=1)
    while not is_working_day(d):
        d += timedelta(days=1)
    return d


def is_office_hours(at: datetime, hours: WorkingHours) -> bool:
    t = local(at)
    return is_working_day(t.date()) and hours.office_start <= t.time() < hours.office_end


def due_at(submitted: datetime, hours: WorkingHours) -> datetime:
    """When a non-urgent order is due: one working day after submission.

    In office hours: the same wall-clock time on the next working day. Outside them: the end of office hours
    on the first working day whose office hours start after the submission.
    """
    t = local(submitted)
    if is_office_hours(t, hours):
        # Wall-clock, not elapsed time: Friday 10:00 CET is due Monday 10:00 CEST across the spring change.
        return datetime.combine(next_working_day(t.date()), t.time(), tzinfo=STOCKHOLM)
    day = t.date()
    if not (is_working_day(day) and t.time() < hours.office_start):
        day = next_working_day(day)
    return datetime.combine(day, hours.office_end, tzinfo=STOCKHOLM)


def callback_deadline(submitted: datetime, minutes: int = 30) -> datetime:
    """When an urgent caller must have been called back: `minutes` of elapsed time, however the clocks move."""
    return (local(submitted).astimezone(UTC) + timedelta(minutes=minutes)).astimezone(STOCKHOLM)


def urgent_due_at(submitted: datetime, target_hours: int = 4) -> datetime:
    """When an urgent order must be done: `target_hours` of elapsed time after submission (the region's
    `urgent_target_hours`), night, weekend or holiday alike. It is never moved to the next working day."""
    return (local(submitted).astimezone(UTC) + timedelta(hours=target_hours)).astimezone(STOCKHOLM)
