"""Tests for models.personnummer.

Personal numbers used here are either official test/example numbers (19121212-1212, 811218-9876,
640823-3234, 701063-2391) or built by `make()` below from a date and a serial.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import personnummer
from models.personnummer import InvalidPersonalNumber, PersonalNumber, luhn_check_digit, mask, parse

TODAY = date(2026, 11, 21)


def reference_check_digit(nine: str) -> int:
    """Independent Luhn: double every other digit from the left, sum all digits of the resulting string."""
    doubled = "".join(str(int(c) * 2) if i % 2 == 0 else c for i, c in enumerate(nine))
    return -sum(map(int, doubled)) % 10


def make(birth: date, serial: int, coordination: bool = False, *, day: int | None = None) -> str:
    """12-digit number for `birth`; `day` overrides the day digits to build impossible dates."""
    dd = day if day is not None else birth.day + (60 if coordination else 0)
    body = f"{birth.year:04d}{birth.month:02d}{dd:02d}{serial:03d}"
    return body + str(reference_check_digit(body[2:]))


def make_raw(yyyymmdd: str, serial: int) -> str:
    body = f"{yyyymmdd}{serial:03d}"
    return body + str(reference_check_digit(body[2:]))


def reason_of(text: str, today: date = TODAY) -> str:
    with pytest.raises(InvalidPersonalNumber) as exc:
        parse(text, today)
    return exc.value.reason


# --- check digit --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nine", "check"),
    [("121212121", 2), ("811218987", 6), ("640823323", 4), ("701063239", 1)],
)
def test_luhn_known_examples(nine: str, check: int) -> None:
    assert luhn_check_digit(nine) == check
    assert reference_check_digit(nine) == check


@given(st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_luhn_matches_independent_implementation(nine: str) -> None:
    assert luhn_check_digit(nine) == reference_check_digit(nine)


@pytest.mark.parametrize("bad", ["", "12345678", "1234567890", "12345678a", "١٢٣٤٥٦٧٨٩"])
def test_luhn_rejects_non_nine_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        luhn_check_digit(bad)


# --- property: generated numbers ----------------------------------------------------------------


@given(
    birth=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    serial=st.integers(min_value=1, max_value=999),
    coordination=st.booleans(),
)
def test_generated_numbers_round_trip(birth: date, serial: int, coordination: bool) -> None:
    digits = make(birth, serial, coordination)
    pn = parse(digits, TODAY)
    assert pn.digits == digits
    assert pn.birth_date == birth
    assert pn.is_coordination is coordination
    assert pn.formatted() == f"{digits[:8]}-{digits[8:]}"
    assert parse(pn.formatted(), TODAY) == pn
    assert pn.masked() == mask(digits) == f"{digits[:8]}-****"
    assert pn.age_on(TODAY) >= 0

    # The 10-digit form resolves to the same century when the separator follows Skatteverket's rule.
    separator = "+" if TODAY.year - birth.year >= 100 else "-"
    assert parse(f"{digits[2:8]}{separator}{digits[8:]}", TODAY) == pn
    if separator == "-":
        assert parse(digits[2:], TODAY) == pn

    check = int(digits[-1])
    for wrong in set(range(10)) - {check}:
        assert reason_of(digits[:-1] + str(wrong)) == "check_digit"
        assert reason_of(f"{digits[2:8]}{separator}{digits[8:11]}{wrong}") == "check_digit"


@given(
    birth=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    serial=st.integers(min_value=1, max_value=999),
    position=st.integers(min_value=2, max_value=10),
    delta=st.integers(min_value=1, max_value=9),
)
def test_any_single_digit_change_is_rejected(birth: date, serial: int, position: int, delta: int) -> None:
    digits = make(birth, serial)
    changed = digits[:position] + str((int(digits[position]) + delta) % 10) + digits[position + 1 :]
    with pytest.raises(InvalidPersonalNumber):
        parse(changed, TODAY)


# --- table tests: valid input --------------------------------------------------------------------


def test_official_test_number_twelve_digits() -> None:
    pn = parse("19121212-1212", TODAY)
    assert pn.digits == "191212121212"
    assert pn.birth_date == date(1912, 12, 12)
    assert not pn.is_coordination
    assert pn.formatted() == "19121212-1212"
    assert pn.masked() == "19121212-****"
    assert parse("191212121212", TODAY) == pn
    assert parse("  19121212-1212\n", TODAY) == pn
    # For 12 digits the century is explicit; a `+` is accepted and does not change it.
    assert parse("19121212+1212", TODAY) == pn


def test_ten_digits_minus_takes_latest_year_not_after_today() -> None:
    assert parse("121212-1212", TODAY).digits == "201212121212"
    assert parse("1212121212", TODAY).digits == "201212121212"


def test_ten_digits_plus_means_a_hundred_years_earlier() -> None:
    pn = parse("121212+1212", TODAY)
    assert pn.digits == "191212121212"
    assert pn.birth_date == date(1912, 12, 12)


def test_ten_digits_minus_with_a_date_later_this_year_is_a_future_birth() -> None:
    # DOMAIN.md §5: `-` means under 100 this calendar year, so the date cannot move back a century
    # (that person turns 100 this year and is written with `+`); a date after today is rejected.
    assert parse("121212-1212", date(2012, 12, 12)).digits == "201212121212"
    assert reason_of("121212-1212", date(2012, 12, 11)) == "future"
    assert reason_of("1212121212", date(2012, 12, 11)) == "future"
    assert parse("121212+1212", date(2012, 12, 11)).digits == "191212121212"


def test_ten_digits_plus_in_the_year_of_the_hundredth_birthday() -> None:
    # Turns 100 later this year: Skatteverket already shows `+`.
    digits = make(date(1926, 12, 12), 121)
    pn = parse(f"{digits[2:8]}+{digits[8:]}", TODAY)
    assert pn.birth_date == date(1926, 12, 12)
    assert pn.age_on(TODAY) == 99


@pytest.mark.parametrize(
    ("text", "birth"),
    [("811218-9876", date(1981, 12, 18)), ("640823-3234", date(1964, 8, 23))],
)
def test_documented_examples_are_valid(text: str, birth: date) -> None:
    pn = parse(text, TODAY)
    assert pn.birth_date == birth
    assert pn.digits == f"{birth.year}{text.replace('-', '')[2:]}"
    assert not pn.is_coordination


def test_samordningsnummer_example() -> None:
    pn = parse("701063-2391", TODAY)
    assert pn.is_coordination
    assert pn.birth_date == date(1970, 10, 3)
    assert pn.digits == "197010632391"
    assert pn.formatted() == "19701063-2391"
    assert pn.masked() == "19701063-****"
    assert parse("19701063-2391", TODAY) == pn


def test_samordningsnummer_bounds() -> None:
    assert parse(make(date(1990, 1, 31), 5, coordination=True), TODAY).birth_date == date(1990, 1, 31)
    assert parse(make(date(1990, 1, 1), 5, coordination=True), TODAY).birth_date == date(1990, 1, 1)


def test_personal_number_is_frozen_and_hashable() -> None:
    pn = parse("19121212-1212", TODAY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pn.digits = "201212121212"  # type: ignore[misc]
    assert {pn, parse("121212+1212", TODAY)} == {pn}
    assert isinstance(pn, PersonalNumber)


# --- table tests: rejected input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "19121212-121",
        "1912121212121",
        "19121212--1212",
        "19121212 1212",
        "191212-12-1212",
        "121212/1212",
        "+121212-1212",
        "121212-1212-",
        "12121-21212",
        "19121212-12a2",
        "١٩١٢١٢١٢١٢١٢",
        "21121212-1212",
        "17121212-1212",
        "00121212-1212",
    ],
)
def test_garbage_is_a_format_error(text: str) -> None:
    assert reason_of(text) == "format"


def test_non_string_is_a_format_error() -> None:
    assert reason_of(None) == "format"  # type: ignore[arg-type]


def test_serial_000_is_invalid() -> None:
    digits = make_raw("19800101", 0)
    assert reason_of(digits) == "format"
    assert reason_of(f"{digits[2:8]}-{digits[8:]}") == "format"


@pytest.mark.parametrize(
    "yyyymmdd",
    [
        "19990231",  # 31 February
        "19990229",  # not a leap year
        "19991301",  # month 13
        "19990001",  # month 0
        "19990100",  # day 0
        "19990132",  # day 32
        "19990160",  # day 60 = coordination day 0
        "19990192",  # coordination day 32
        "19990199",
        "19990289",  # coordination 29 February in a non-leap year
        "19990491",  # coordination 31 April
    ],
)
def test_impossible_dates(yyyymmdd: str) -> None:
    digits = make_raw(yyyymmdd, 123)
    assert reason_of(digits) == "date"
    assert reason_of(f"{digits[2:8]}-{digits[8:]}") == "date"


def test_leap_day_depends_on_resolved_century() -> None:
    digits = make_raw("20000229", 123)
    assert parse(f"{digits[2:8]}-{digits[8:]}", TODAY).birth_date == date(2000, 2, 29)
    assert reason_of(f"{digits[2:8]}+{digits[8:]}") == "date"  # 1900-02-29 does not exist
    assert reason_of(make_raw("19000229", 123)) == "date"


def test_future_birth_date() -> None:
    tomorrow = TODAY + timedelta(days=1)
    assert reason_of(make(tomorrow, 123)) == "future"
    assert reason_of(make(tomorrow, 123, coordination=True)) == "future"
    assert reason_of(make(date(2030, 1, 1), 123)) == "future"
    assert parse(make(TODAY, 123), TODAY).age_on(TODAY) == 0


def test_wrong_check_digit() -> None:
    assert reason_of("19121212-1213") == "check_digit"
    assert reason_of("121212-1213") == "check_digit"
    assert reason_of("701063-2392") == "check_digit"


def test_error_is_value_error_and_does_not_echo_the_input() -> None:
    with pytest.raises(ValueError) as exc:
        parse("19121212-1213", TODAY)
    assert "1912" not in str(exc.value)
    assert "1213" not in str(exc.value)


# --- age ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on", "age"),
    [
        (date(1912, 12, 12), 0),
        (date(2026, 12, 11), 113),
        (date(2026, 12, 12), 114),
        (date(2026, 12, 13), 114),
        (date(2027, 1, 1), 114),
    ],
)
def test_age_around_birthday(on: date, age: int) -> None:
    assert parse("19121212-1212", TODAY).age_on(on) == age


@pytest.mark.parametrize(
    ("on", "age"),
    [
        (date(2001, 2, 28), 0),
        (date(2001, 3, 1), 1),  # non-leap year: the birthday counts from 1 March
        (date(2004, 2, 28), 3),
        (date(2004, 2, 29), 4),
        (date(2015, 2, 28), 14),
        (date(2015, 3, 1), 15),
    ],
)
def test_age_for_29_february(on: date, age: int) -> None:
    pn = parse(make(date(2000, 2, 29), 456), TODAY)
    assert pn.age_on(on) == age


def test_age_of_samordningsnummer_uses_real_birth_day() -> None:
    pn = parse("701063-2391", TODAY)
    assert pn.age_on(date(2026, 10, 2)) == 55
    assert pn.age_on(date(2026, 10, 3)) == 56


# --- mask -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("191212121212", "19121212-****"),
        ("197010632391", "19701063-****"),
        ("19121212-****", "****"),
        ("19121212-1212", "****"),
        ("121212-1212", "****"),
        ("1212", "****"),
        ("", "****"),
        ("19121212121a", "****"),
    ],
)
def test_mask(stored: str, shown: str) -> None:
    assert mask(stored) == shown


def test_module_contract_names() -> None:
    for name in ("parse", "PersonalNumber", "mask", "luhn_check_digit", "InvalidPersonalNumber"):
        assert hasattr(personnummer, name)
    assert issubclass(InvalidPersonalNumber, ValueError)
