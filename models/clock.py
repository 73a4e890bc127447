"""Where "now" comes from. Code that needs the time takes a `Clock`, so tests can pin it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

STOCKHOLM = ZoneInfo("Europe/Stockholm")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(STOCKHOLM)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: give a timezone")
    return at.astimezone(UTC)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, at: datetime) -> None:
        # Kept in UTC: adding a timedelta to a Stockholm wall-clock time is wrong across a DST change.
        self._at = _utc(at)

    def now(self) -> datetime:
        return self._at.astimezone(STOCKHOLM)

    def set(self, at: datetime) -> None:
        self._at = _utc(at)

    def advance(self, **delta: float) -> datetime:
        """Move on by `timedelta(**delta)` of elapsed time; returns the new now."""
        self._at += timedelta(**delta)
        return self.now()
