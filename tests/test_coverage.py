"""Urgent coverage: every minute of the week has exactly one receiver of urgent orders, walked minute by minute
in UTC through real weeks (holidays and both DST nights), and settings with a gap or an overlap are refused."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.calendar import is_working_day, local
from models.clock import STOCKHOLM, FixedClock
from models.coverage import CoverageWindow, coverage_problems, on_call_hours, receiver_at
from models.regions import RegionSettings, load_regions
from tests.test_regions import COVERAGE

REGIONS = load_regions()


def sthlm(text: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=STOCKHOLM, fold=fold)


def window(receiver: str, days: str, start: str, end: str) -> CoverageWindow:
    return CoverageWindow.model_validate({"receiver": receiver, "days": days, "start": time.fromisoformat(start),
                                          "end": time.fromisoformat(end)})


def kalmar_rule(at: datetime) -> str:
    """DOMAIN.md 'Urgent coverage', written independently of the settings: support 07:00–17:00 on working
    days, on-call (SEED-1: 17:00–07:00) the rest of the week."""
    t = local(at)
    return "support" if is_working_day(t.date()) and time(7) <= t.time() < time(17) else "on_call"


# Mondays 00:00 Stockholm time; each walk is the following seven days, minute by minute of elapsed time.
WEEKS = {
    "spring DST night (Sun 29 Mar)": "2026-03-23",
    "Easter (Good Friday, Easter Monday)": "2026-03-30",
    "Ascension (Thu 14 May)": "2026-05-11",
    "midsummer eve (Fri 19 Jun)": "2026-06-15",
    "autumn DST night (Sun 25 Oct)": "2026-10-19",
    "Christmas (julafton Thu, juldagen, annandag)": "2026-12-21",
    "New Year (nyårsafton Thu, nyårsdagen Fri)": "2026-12-28",
    "an ordinary week": "2026-11-23",
}


def minutes_of_week(monday: str) -> list[datetime]:
    start = sthlm(f"{monday} 00:00").astimezone(UTC)
    end = (datetime.combine(date.fromisoformat(monday) + timedelta(days=7), time(0), tzinfo=STOCKHOLM)
           .astimezone(UTC))
    out, t = [], start
    while t < end:
        out.append(t)
        t += timedelta(minutes=1)
    return out


@pytest.mark.parametrize("monday", list(WEEKS.values()), ids=list(WEEKS))
def test_kalmar_has_a_receiver_at_every_minute_of_the_week(monday: str) -> None:
    coverage = REGIONS["kalmar"].urgent_coverage
    got = Counter()
    for at in minutes_of_week(monday):
        receiver = receiver_at(at, coverage)
        assert receiver == kalmar_rule(at), local(at).isoformat()
        got[receiver] += 1
    # Working days here give support 10 hours each; everything else is on call.
    working = sum(is_working_day(date.fromisoformat(monday) + timedelta(days=d)) for d in range(7))
    assert got["support"] == working * 600


@pytest.mark.parametrize("code", sorted(REGIONS))
@pytest.mark.parametrize("monday", [WEEKS["spring DST night (Sun 29 Mar)"], WEEKS["autumn DST night (Sun 25 Oct)"],
                                    WEEKS["Christmas (julafton Thu, juldagen, annandag)"]])
def test_every_region_has_a_receiver_at_every_minute(code: str, monday: str) -> None:
    coverage = REGIONS[code].urgent_coverage
    receivers = Counter(receiver_at(at, coverage) for at in minutes_of_week(monday))
    # A DST week is an hour shorter or longer in elapsed minutes, and every one of them is covered.
    assert sum(receivers.values()) == {"2026-03-23": 7 * 1440 - 60, "2026-10-19": 7 * 1440 + 60}.get(monday, 7 * 1440)
    if code == "ostergotland":
        assert set(receivers) == {"on_call"}  # SEED-0: urgent matters phoned in around the clock


@pytest.mark.parametrize(("at", "receiver"), [
    ("2026-11-23 06:59", "on_call"),   # Monday: the weekend's on call lasts until 07:00
    ("2026-11-23 07:00", "support"),   # support takes over at once: no gap before office hours (08:00)
    ("2026-11-23 08:00", "support"),
    ("2026-11-23 16:30", "support"),   # office hours end, support still covers: no gap before on call
    ("2026-11-23 16:45", "support"),   # the Monday 16:45: an open support queue, not a closed one
    ("2026-11-23 16:59", "support"),
    ("2026-11-23 17:00", "on_call"),
    ("2026-11-24 00:00", "on_call"),
    ("2026-11-27 17:00", "on_call"),   # Friday evening → Monday 07:00
    ("2026-11-28 12:00", "on_call"),   # Saturday
    ("2026-04-06 10:00", "on_call"),   # Easter Monday
    ("2026-04-07 06:59", "on_call"),   # the morning after a holiday is on call until 07:00
    ("2026-04-07 07:00", "support"),
    ("2026-12-23 16:59", "support"),   # the day before julafton
    ("2026-12-23 17:00", "on_call"),
    ("2026-12-24 10:00", "on_call"),   # julafton (de facto holiday)
    ("2026-03-29 01:59", "on_call"),   # spring DST night: the last minute before the jump ...
    ("2026-03-29 03:00", "on_call"),   # ... and the first after it
])
def test_kalmar_boundaries(at: str, receiver: str) -> None:
    assert receiver_at(sthlm(at), REGIONS["kalmar"].urgent_coverage) == receiver


@pytest.mark.parametrize("fold", [0, 1])
def test_both_passes_through_the_repeated_autumn_hour_are_covered(fold: int) -> None:
    at = sthlm("2026-10-25 02:30", fold=fold)
    for code, r in REGIONS.items():
        assert receiver_at(at, r.urgent_coverage) == "on_call", code


def test_a_fixed_clock_walks_from_support_to_on_call_and_back() -> None:
    clock = FixedClock(sthlm("2026-11-27 16:59"))  # Friday
    coverage = REGIONS["kalmar"].urgent_coverage
    seen = [receiver_at(clock.now(), coverage)]
    for _ in range(3 * 24 * 60 - 1):  # until Monday 16:58
        seen.append(receiver_at(clock.advance(minutes=1), coverage))
    changes = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    # Friday 17:00 → on call; Monday 07:00 → support: two changes, nothing in between.
    assert [seen[0], seen[-1]] == ["support", "support"] and changes == [1, 1 + 62 * 60]


# --- settings with gaps or overlaps are refused ----------------------------------------------------------

OLD_KALMAR = [  # the old settings: office hours 08:00–16:30 and on call 17:00–07:00
    window("support", "working", "08:00", "16:30"),
    window("on_call", "working", "17:00", "07:00"),
    window("on_call", "non_working", "00:00", "00:00"),
]


def test_the_old_gaps_are_named_with_their_times() -> None:
    assert coverage_problems(OLD_KALMAR) == [
        "no receiver of urgent orders on working days 07:00–08:00, 16:30–17:00 "
        "(every minute of the week needs office-hours support or on-call)"]


def test_an_overlap_is_refused_with_its_times() -> None:
    overlapping = [window("support", "working", "07:00", "17:30"), *OLD_KALMAR[1:]]
    assert coverage_problems(overlapping) == [
        "more than one receiver (on_call, support) on working days 17:00–17:30"]


def test_a_missing_kind_of_day_is_a_gap_of_the_whole_day() -> None:
    problems = coverage_problems(OLD_KALMAR[:2])
    assert problems[-1].startswith("no receiver of urgent orders on non-working days 00:00–00:00")


def test_every_day_windows_count_for_both_kinds_of_day() -> None:
    assert coverage_problems([window("on_call", "every", "00:00", "00:00")]) == []
    assert coverage_problems([window("on_call", "every", "12:00", "12:00"),
                              window("support", "non_working", "09:00", "10:00")]) == [
        "more than one receiver (on_call, support) on non-working days 09:00–10:00"]


def test_loading_settings_with_a_gap_fails_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "gap.toml"
    # Kalmar's coverage as it was: support 08:00–16:30 on working days, on call from 17:00.
    gap = COVERAGE.replace("start = 07:00:00\nend = 17:00:00", "start = 08:00:00\nend = 16:30:00")
    path.write_text('[[regions]]\ncode = "uppsala"\nname = "Region Uppsala"' + gap, encoding="utf-8")
    with pytest.raises(ValueError, match=r"gap\.toml(.|\n)*urgent_coverage of region 'uppsala': no receiver of "
                                         r"urgent orders on working days 07:00–08:00, 16:30–17:00"):
        load_regions(path)


def test_a_region_without_coverage_is_refused() -> None:
    with pytest.raises(ValidationError, match="urgent_coverage"):
        RegionSettings.model_validate({"code": "uppsala", "name": "Region Uppsala"})


@pytest.mark.parametrize("bad", [{"start": time(7, 0, 30)}, {"receiver": "head"}, {"days": "weekdays"},
                                 {"colour": "red"}])
def test_windows_are_checked(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"receiver": "support", "days": "working", "start": time(7), "end": time(17)}
    with pytest.raises(ValidationError):
        CoverageWindow.model_validate(fields | bad)


def test_on_call_hours_shown_only_with_a_source() -> None:
    assert REGIONS["kalmar"].on_call_hours == "17:00–07:00"
    assert REGIONS["ostergotland"].on_call_hours == "dygnet runt"
    assert REGIONS["jonkoping"].on_call_hours is None and REGIONS["stockholm"].on_call_hours is None
    assert on_call_hours(OLD_KALMAR) is None  # no source
