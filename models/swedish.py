"""Times and durations as people read them in Swedish, in Europe/Stockholm time: pages, emails and artifacts
say a time the same way everywhere. Pure functions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from models.calendar import local

MONTHS = ("januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti", "september", "oktober",
          "november", "december")
WEEKDAYS = ("måndag", "tisdag", "onsdag", "torsdag", "fredag", "lördag", "söndag")
NONE = "–"


def _formatted(at: datetime | None, fmt: Callable[[datetime], str]) -> str:
    return NONE if at is None else fmt(local(at))


def when_long(at: datetime | None) -> str:
    """'tisdag 24 november 2026 kl. 16.00'."""
    return _formatted(at, lambda t: f"{WEEKDAYS[t.weekday()]} {t.day} {MONTHS[t.month - 1]} {t.year} kl. {t:%H.%M}")


def when(at: datetime | None) -> str:
    """'24 november 2026 kl. 16.00'."""
    return _formatted(at, lambda t: f"{t.day} {MONTHS[t.month - 1]} {t.year} kl. {t:%H.%M}")


def when_short(at: datetime | None) -> str:
    """'24 nov 2026 16.00' (tables)."""
    return _formatted(at, lambda t: f"{t.day} {MONTHS[t.month - 1][:3]} {t.year} {t:%H.%M}")


def day(at: datetime | None) -> str:
    """'24 november 2026'."""
    return _formatted(at, lambda t: f"{t.day} {MONTHS[t.month - 1]} {t.year}")


def duration(minutes: int) -> str:
    """How late: minutes, then hours, then days."""
    if minutes < 60:
        return f"{minutes} minuter"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} timmar"
    return f"{hours // 24} dygn"
