"""Time rules in Stockholm: working days, office hours, on call (Kalmar's urgent coverage), due times, DST."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from models.calendar import (
    WorkingHours,
    callback_deadline,
    due_at,
    is_office_hours,
    is_working_day,
    local,
    next_working_day,
)
from models.clock import STOCKHOLM, FixedClock, SystemClock
from models.coverage import CoverageWindow, receiver_at
from models.regions import load_regions

HOURS = WorkingHours()
KALMAR = load_regions()["kalmar"].urgent_coverage
ALWAYS_OPEN = [CoverageWindow(receiver="on_call", days="every", start=time(0, 0), end=time(0, 0))]


def is_on_call(at: datetime, coverage: list[CoverageWindow] = KALMAR) -> bool:
    return receiver_at(at, coverage) == "on_call"


def sthlm(text: str, fold: int = 0) -> datetime:
    """'2026-11-06 15:00' as Stockholm wall-clock time; fold=1 picks the second of a repeated hour."""
    return datetime.fromisoformat(text).replace(tzinfo=STOCKHOLM, fold=fold)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- working days -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("day", "working"), [
    ("2026-01-01", False),  # nyårsdagen, Thursday
    ("2026-01-02", True),
    ("2026-01-06", False),  # trettondedag jul, Tuesday
    ("2026-04-03", False),  # långfredagen
    ("2026-04-06", False),  # annandag påsk
    ("2026-05-01", False),  # första maj
    ("2026-05-14", False),  # Kristi himmelsfärdsdag, Thursday
    ("2026-05-15", True),   # the Friday after Ascension is an ordinary working day
    ("2026-06-05", True),
    ("2026-06-19", False),  # midsommarafton (de facto), Friday
    ("2026-06-22", True),
    ("2026-11-02", True),   # an ordinary Monday
    ("2026-11-07", False),  # Saturday
    ("2026-11-08", False),  # Sunday
    ("2026-12-23", True),
    ("2026-12-24", False),  # julafton (de facto), Thursday
    ("2026-12-25", False),  # juldagen
    ("2026-12-28", True),
    ("2026-12-31", False),  # nyårsafton (de facto), Thursday
    ("2027-01-01", False),  # next year's holidays are looked up too
])
def test_is_working_day(day: str, working: bool) -> None:
    assert is_working_day(date.fromisoformat(day)) is working


def test_is_working_day_refuses_a_datetime() -> None:
    with pytest.raises(TypeError):
        is_working_day(sthlm("2026-12-24 10:00"))


@pytest.mark.parametrize(("day", "expected"), [
    ("2026-11-02", "2026-11-03"),  # Monday → Tuesday
    ("2026-11-06", "2026-11-09"),  # Friday → Monday
    ("2026-11-07", "2026-11-09"),  # Saturday → Monday
    ("2026-01-05", "2026-01-07"),  # over trettondedag jul
    ("2026-05-13", "2026-05-15"),  # over Ascension
    ("2026-06-18", "2026-06-22"),  # over midsummer eve and the weekend
    ("2026-12-23", "2026-12-28"),  # over Christmas
    ("2026-12-30", "2027-01-04"),  # over New Year's Eve, New Year's Day and the weekend
])
def test_next_working_day(day: str, expected: str) -> None:
    assert next_working_day(date.fromisoformat(day)) == date.fromisoformat(expected)


# --- office hours and on call -------------------------------------------------------------------------

@pytest.mark.parametrize(("at", "office", "on_call"), [
    ("2026-11-02 07:59", False, False),  # support, before office hours
    ("2026-11-02 08:00", True, False),
    ("2026-11-02 16:29", True, False),
    ("2026-11-02 16:30", False, False),  # support, between office hours and on call
    ("2026-11-02 16:59", False, False),
    ("2026-11-02 17:00", False, True),
    ("2026-11-02 23:59", False, True),
    ("2026-11-03 00:00", False, True),
    ("2026-11-03 06:59", False, True),   # tail of Monday evening's shift
    ("2026-11-03 07:00", False, False),
    ("2026-11-06 16:59", False, False),  # Friday
    ("2026-11-06 17:00", False, True),
    ("2026-11-07 12:00", False, True),   # Saturday: on call all day
    ("2026-11-08 12:00", False, True),   # Sunday
    ("2026-11-09 06:59", False, True),   # Monday: the weekend's on call lasts until 07:00
    ("2026-11-09 07:00", False, False),
    ("2026-05-14 12:00", False, True),   # Ascension
    ("2026-06-18 17:00", False, True),   # the evening before midsummer eve
    ("2026-06-19 12:00", False, True),   # midsummer eve
    ("2026-06-22 06:59", False, True),
    ("2026-12-24 10:00", False, True),   # julafton
    ("2026-12-31 10:00", False, True),   # nyårsafton
    ("2026-01-06 10:00", False, True),   # trettondedag jul
    ("2026-03-30 06:59", False, True),   # Monday after the spring DST change
    ("2026-03-30 07:00", False, False),
    ("2026-10-26 06:59", False, True),   # Monday after the autumn DST change
    ("2026-10-26 07:00", False, False),
])
def test_office_hours_and_on_call(at: str, office: bool, on_call: bool) -> None:
    assert is_office_hours(sthlm(at), HOURS) is office
    assert is_on_call(sthlm(at)) is on_call


@pytest.mark.parametrize("instant", [
    "2026-03-29T00:59:00",  # 01:59 CET, the last minute before the clocks jump
    "2026-03-29T01:00:00",  # 03:00 CEST, the first minute after
    "2026-10-25T00:30:00",  # 02:30 CEST, first pass through the repeated hour
    "2026-10-25T01:30:00",  # 02:30 CET, second pass
])
def test_on_call_through_the_night_of_a_dst_change(instant: str) -> None:
    assert is_on_call(utc(instant))
    assert not is_office_hours(utc(instant), HOURS)


def test_judged_by_stockholm_time_whatever_the_input_zone() -> None:
    assert is_office_hours(utc("2026-11-02T07:00:00"), HOURS)   # 08:00 CET
    assert not is_office_hours(utc("2026-06-01T15:00:00"), HOURS)  # 17:00 CEST
    assert is_on_call(utc("2026-06-01T15:00:00"))


@pytest.mark.parametrize("at", ["2026-11-02 12:00", "2026-11-02 16:45", "2026-11-03 07:30", "2026-11-07 12:00"])
def test_urgent_line_always_open_is_always_on_call(at: str) -> None:
    assert is_on_call(sthlm(at), ALWAYS_OPEN)


def test_on_call_follows_the_region_coverage() -> None:
    early = [CoverageWindow(receiver="support", days="working", start=time(7, 30), end=time(16, 0)),
             CoverageWindow(receiver="on_call", days="working", start=time(16, 0), end=time(7, 30)),
             CoverageWindow(receiver="on_call", days="non_working", start=time(0, 0), end=time(0, 0))]
    assert is_on_call(sthlm("2026-11-02 16:00"), early)
    assert is_on_call(sthlm("2026-11-03 07:29"), early)
    assert not is_on_call(sthlm("2026-11-03 07:30"), early)


@pytest.mark.parametrize("fields", [
    {"office_start": time(16, 30), "office_end": time(8, 0)},
    {"office_start": time(8, 0), "office_end": time(8, 0)},
    {"on_call_start": time(17, 0)},  # on call is urgent coverage now, not part of the office hours
])
def test_inconsistent_working_hours_are_refused(fields: dict[str, time]) -> None:
    with pytest.raises(ValidationError):
        WorkingHours(**fields)  # type: ignore[arg-type]


def test_working_hours_are_immutable() -> None:
    with pytest.raises(ValidationError):
        HOURS.office_end = time(17, 0)  # type: ignore[misc]


# --- due times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("submitted", "due"), [
    # inside office hours: the same wall-clock time on the next working day
    ("2026-11-02 08:00", "2026-11-03 08:00"),
    ("2026-11-02 16:29", "2026-11-03 16:29"),
    ("2026-11-06 15:00", "2026-11-09 15:00"),  # Friday → Monday
    ("2026-12-23 10:00", "2026-12-28 10:00"),  # Wednesday before Christmas → Monday after
    ("2026-06-18 09:00", "2026-06-22 09:00"),  # over midsummer
    ("2026-05-13 12:00", "2026-05-15 12:00"),  # over Ascension
    ("2026-01-05 12:00", "2026-01-07 12:00"),  # over trettondedag jul
    ("2026-12-30 10:00", "2027-01-04 10:00"),  # over New Year
    ("2026-03-27 10:00", "2026-03-30 10:00"),  # Friday CET → Monday CEST: wall-clock, not 72 hours
    # outside office hours: end of office hours on the first working day that has not yet begun
    ("2026-11-09 07:00", "2026-11-09 16:30"),  # before office hours → same day
    ("2026-11-09 07:59", "2026-11-09 16:30"),
    ("2026-11-09 16:30", "2026-11-10 16:30"),
    ("2026-11-09 18:00", "2026-11-10 16:30"),
    ("2026-11-10 00:30", "2026-11-10 16:30"),
    ("2026-11-07 11:00", "2026-11-09 16:30"),  # Saturday → Monday
    ("2026-11-08 23:00", "2026-11-09 16:30"),  # Sunday night → Monday
    ("2026-06-18 18:00", "2026-06-22 16:30"),  # evening before midsummer eve
    ("2026-06-19 10:00", "2026-06-22 16:30"),  # on midsummer eve
    ("2026-12-23 17:00", "2026-12-28 16:30"),
    ("2026-05-14 10:00", "2026-05-15 16:30"),  # on Ascension
])
def test_due_at(submitted: str, due: str) -> None:
    result = due_at(sthlm(submitted), HOURS)
    assert result == sthlm(due)
    assert result.tzinfo is STOCKHOLM
    assert result.replace(tzinfo=None) == datetime.fromisoformat(due)


def test_due_at_in_the_repeated_autumn_hour() -> None:
    # 02:30 on Sunday 2026-10-25 happens twice; both are outside office hours.
    assert due_at(sthlm("2026-10-25 02:30", fold=0), HOURS) == sthlm("2026-10-26 16:30")
    assert due_at(sthlm("2026-10-25 02:30", fold=1), HOURS) == sthlm("2026-10-26 16:30")


def test_due_at_accepts_any_timezone() -> None:
    # 07:00 UTC on a Monday in November is 08:00 in Stockholm: inside office hours.
    assert due_at(utc("2026-11-09T07:00:00"), HOURS) == sthlm("2026-11-10 08:00")


def test_due_at_uses_the_region_office_end() -> None:
    short = WorkingHours(office_end=time(15, 0))
    assert due_at(sthlm("2026-11-09 15:30"), short) == sthlm("2026-11-10 15:00")


# --- callback deadline --------------------------------------------------------------------------------

@pytest.mark.parametrize(("submitted", "deadline"), [
    (sthlm("2026-11-02 17:00"), sthlm("2026-11-02 17:30")),
    (sthlm("2026-11-02 23:45"), sthlm("2026-11-03 00:15")),
    # spring: 01:45 CET + 30 minutes is 03:15 CEST, because 02:00–03:00 does not exist
    (sthlm("2026-03-29 01:45"), sthlm("2026-03-29 03:15")),
    # autumn: the first 02:45 (CEST) + 30 minutes is the second 02:15 (CET)
    (sthlm("2026-10-25 02:45", fold=0), sthlm("2026-10-25 02:15", fold=1)),
    # autumn: the second 02:45 (CET) + 30 minutes is 03:15 CET
    (sthlm("2026-10-25 02:45", fold=1), sthlm("2026-10-25 03:15")),
])
def test_callback_deadline_is_thirty_minutes_of_elapsed_time(submitted: datetime, deadline: datetime) -> None:
    result = callback_deadline(submitted)
    assert result.astimezone(UTC) - submitted.astimezone(UTC) == timedelta(minutes=30)
    assert result.astimezone(UTC) == deadline.astimezone(UTC)
    assert (result.hour, result.minute, result.fold) == (deadline.hour, deadline.minute, deadline.fold)
    assert result.tzinfo is STOCKHOLM


def test_callback_deadline_minutes_come_from_the_caller() -> None:
    assert callback_deadline(sthlm("2026-11-02 17:00"), minutes=15) == sthlm("2026-11-02 17:15")


# --- local and naive datetimes ------------------------------------------------------------------------

def test_local_converts_to_stockholm() -> None:
    summer = local(utc("2026-07-01T10:00:00"))
    assert (summer.hour, summer.utcoffset()) == (12, timedelta(hours=2))
    winter = local(utc("2026-01-15T10:00:00"))
    assert (winter.hour, winter.utcoffset()) == (11, timedelta(hours=1))


@pytest.mark.parametrize("call", [
    lambda at: local(at),
    lambda at: is_office_hours(at, HOURS),
    lambda at: receiver_at(at, KALMAR),
    lambda at: due_at(at, HOURS),
    lambda at: callback_deadline(at),
    lambda at: FixedClock(at),
])
def test_naive_datetimes_are_refused(call: Callable[[datetime], object]) -> None:
    with pytest.raises(ValueError, match="naive"):
        call(datetime(2026, 11, 2, 12, 0))


# --- clocks -------------------------------------------------------------------------------------------

def test_fixed_clock_drives_the_rules_across_the_spring_dst_change() -> None:
    clock = FixedClock(sthlm("2026-03-29 01:45"))
    deadline = callback_deadline(clock.now())
    assert is_on_call(clock.now())

    assert clock.advance(minutes=29) < deadline
    assert clock.advance(minutes=1) == deadline
    assert (clock.now().hour, clock.now().minute) == (3, 15)  # the clocks jumped an hour, elapsed time did not


def test_fixed_clock_crosses_from_the_gap_into_on_call() -> None:
    clock = FixedClock(sthlm("2026-11-06 16:59"))
    assert not is_on_call(clock.now())
    clock.advance(minutes=1)
    assert is_on_call(clock.now())
    clock.set(utc("2026-11-09T06:00:00"))  # Monday 07:00 in Stockholm
    assert clock.now() == sthlm("2026-11-09 07:00")
    assert not is_on_call(clock.now())


def test_fixed_clock_reports_stockholm_time() -> None:
    clock = FixedClock(utc("2026-07-01T10:00:00"))
    assert clock.now().tzinfo is STOCKHOLM
    assert clock.now().hour == 12


def test_system_clock_is_aware_and_current() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    assert now.tzinfo is STOCKHOLM
    assert before <= now <= datetime.now(UTC)
