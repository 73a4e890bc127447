"""The rule engine (models.rules.check_order): every contract error code, warnings, all errors at once.

Pure: the RuleContext is built by hand, no database. Personal numbers are the official test number
19121212-1212 or are built here from a birth date relative to the test's own `now` (valid Luhn digit).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from models.access import AccessState, Restriction
from models.calendar import local
from models.clock import STOCKHOLM
from models.regions import load_regions
from models.rules import MESSAGES, WARNINGS, CheckResult, RuleContext, check_order

OFFICIAL = "19121212-1212"          # Skatteverket's official test number
OFFICIAL_12 = "191212121212"

TUESDAY_10 = datetime(2026, 11, 24, 10, 0, tzinfo=STOCKHOLM)    # a working day, office hours
SATURDAY_10 = datetime(2026, 11, 28, 10, 0, tzinfo=STOCKHOLM)   # not a working day
CHRISTMAS_EVE_10 = datetime(2026, 12, 24, 10, 0, tzinfo=STOCKHOLM)  # a Thursday, julafton

CARE_UNITS = {
    "DEMO-KALMAR-UNIT": "kalmar",
    "DEMO-STOCKHOLM-UNIT": "stockholm",
    "DEMO-OSTERGOTLAND-UNIT": "ostergotland",
    "DEMO-JONKOPING-UNIT": "jonkoping",
}
REGION_HOURS = {code: r.hours for code, r in load_regions().items()}

CARE_LOCK = AccessState(lock=Restriction("care", "kalmar", "RO-2026-000001"))
PATIENT_SEAL = AccessState(seal=Restriction("patient", "kalmar", "RO-2026-000002"))
BOTH_BY_PATIENT = AccessState(seal=Restriction("patient", "kalmar", "RO-2026-000003"),
                              lock=Restriction("patient", "kalmar", "RO-2026-000003"))


# --- helpers ------------------------------------------------------------------------------------------

def luhn(nine: str) -> int:
    """Independent Luhn over YYMMDDNNN: weights 2,1,2,...; digit sums of the products."""
    total = 0
    for i, ch in enumerate(nine):
        p = int(ch) * (2 - i % 2)
        total += p // 10 + p % 10
    return (10 - total % 10) % 10


def pnr(born: date, serial: int = 982, *, coordination: bool = False, ten: bool = False) -> str:
    """A personal number (or samordningsnummer) made here for `born`, never copied from anywhere."""
    dd = born.day + (60 if coordination else 0)
    six = f"{born:%y%m}{dd:02d}"
    check = luhn(f"{six}{serial:03d}")
    if ten:
        return f"{six}-{serial:03d}{check}"
    return f"{born.year:04d}{six[2:]}-{serial:03d}{check}"


def years_before(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February in a non-leap year
        return d.replace(year=d.year - years, day=28)


def today_in_stockholm(now: datetime) -> date:
    return local(now).date()


def child(now: datetime, years: int, days: int = 0, serial: int = 983) -> str:
    """Someone whose `years`th birthday is `days` days after the local date of `now` (negative: before)."""
    return pnr(years_before(today_in_stockholm(now), years) + timedelta(days=days), serial)


def ctx(now: datetime = TUESDAY_10, access: AccessState | None = None) -> RuleContext:
    return RuleContext(now=now, care_units=CARE_UNITS, region_hours=REGION_HOURS, access=access)


def body(kind: str = "seal_or_lock", /, **extra: Any) -> dict[str, Any]:
    """A valid order of each type (at TUESDAY_10), changed by `extra`; a value of ... removes the field."""
    b: dict[str, Any] = {
        "order_type": kind, "initiative": "care", "patient_personal_number": OFFICIAL,
        "urgent": False, "reason": "Hot mot patienten", "care_unit_hsa_id": "DEMO-KALMAR-UNIT",
        "region": "kalmar",
    }
    if kind == "seal_or_lock":
        b["actions"] = ["seal_journal", "lock_login"]
    elif kind == "restore_access":
        b["actions"] = ["lock_login"]
    elif kind == "block_guardian":
        b["patient_personal_number"] = child(TUESDAY_10, 8, -40)
        b["guardian_personal_number"] = OFFICIAL
    elif kind == "minor_access":
        b["patient_personal_number"] = child(TUESDAY_10, 14, -40)
        b["guardian_personal_number"] = OFFICIAL
        b["minor_access"] = {"grant": True, "recipient": "guardian", "child_consent": True}
    for k, v in extra.items():
        if v is ...:
            b.pop(k, None)
        else:
            b[k] = v
    return b


def pairs(result: CheckResult) -> set[tuple[str, str]]:
    return {(p.field, p.code) for p in result.errors}


def warning_codes(result: CheckResult) -> set[str]:
    return {w.code for w in result.warnings}


# --- valid orders ---------------------------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any], AccessState | None]] = [
    ("seal_or_lock", body("seal_or_lock"), None),
    ("seal_or_lock patient", body("seal_or_lock", initiative="patient", actions=["seal_journal"]), None),
    ("restore_access care", body("restore_access"), CARE_LOCK),
    ("restore_access patient seal with id check",
     body("restore_access", initiative="patient", actions=["seal_journal"], identity_checked_in_person=True),
     PATIENT_SEAL),
    ("restore_access patient lock, no id check needed",
     body("restore_access", initiative="patient", actions=["lock_login"]), BOTH_BY_PATIENT),
    ("restore_access state unknown", body("restore_access", actions=["seal_journal", "lock_login"]), None),
    ("block_guardian", body("block_guardian"), None),
    ("block_guardian actions ignored", body("block_guardian", actions=["seal_journal"]), None),
    ("minor_access grant guardian", body("minor_access"), None),
    ("minor_access grant minor",
     body("minor_access", guardian_personal_number=..., minor_access={"grant": True, "recipient": "minor"}), None),
    ("minor_access revoke guardian without consent",
     body("minor_access", minor_access={"grant": False, "recipient": "guardian", "child_consent": False}), None),
    ("minor_access protected, to the minor",
     body("minor_access", patient_protected_identity=True, guardian_personal_number=...,
          minor_access={"grant": True, "recipient": "minor"}), None),
    ("reason exactly 2000", body("seal_or_lock", reason="x" * 2000), None),
    ("no reason", body("seal_or_lock", reason=...), None),
    ("care unit in lower case", body("seal_or_lock", care_unit_hsa_id=" demo-kalmar-unit "), None),
]


@pytest.mark.parametrize(("raw", "access"), [(b, a) for _, b, a in VALID], ids=[n for n, _, _ in VALID])
def test_valid_orders_have_no_errors(raw: dict[str, Any], access: AccessState | None) -> None:
    r = check_order(raw, ctx(access=access))
    assert r.errors == []
    assert r.ok
    assert r.order is not None
    assert r.order.order_type == raw["order_type"]


def test_valid_order_of_each_type_is_typed() -> None:
    seen = set()
    for name, raw, access in VALID:
        r = check_order(raw, ctx(access=access))
        assert r.order is not None, name
        seen.add(r.order.order_type)
    assert seen == {"seal_or_lock", "restore_access", "block_guardian", "minor_access"}


def test_accepted_order_is_normalised() -> None:
    r = check_order(body("seal_or_lock", actions=["lock_login", "seal_journal", "lock_login"],
                         care_unit_hsa_id="demo-kalmar-unit"), ctx())
    assert r.order is not None
    assert r.order.actions == ["seal_journal", "lock_login"]
    assert r.order.care_unit_hsa_id == "DEMO-KALMAR-UNIT"
    assert r.order.patient_personal_number == OFFICIAL_12

    r = check_order(body("block_guardian", actions=["seal_journal"]), ctx())
    assert r.order is not None
    assert r.order.actions == []
    assert r.order.guardian_personal_number == OFFICIAL_12


# --- one or more rows per contract code -------------------------------------------------------------------

def _future(now: datetime) -> str:
    return pnr(today_in_stockholm(now) + timedelta(days=1), 984)


# (id, body builder, access state, expected (field, code))
ERROR_ROWS: list[tuple[str, Callable[[], dict[str, Any]], AccessState | None, tuple[str, str]]] = [
    # required
    ("required order_type", lambda: body(order_type=...), None, ("order_type", "required")),
    ("required initiative", lambda: body(initiative=...), None, ("initiative", "required")),
    ("required initiative blank", lambda: body(initiative="  "), None, ("initiative", "required")),
    ("required patient", lambda: body(patient_personal_number=...), None, ("patient_personal_number", "required")),
    ("required patient empty", lambda: body(patient_personal_number=""), None,
     ("patient_personal_number", "required")),
    ("required actions seal_or_lock", lambda: body(actions=[]), None, ("actions", "required")),
    ("required actions missing", lambda: body(actions=...), None, ("actions", "required")),
    ("required actions restore", lambda: body("restore_access", actions=...), CARE_LOCK, ("actions", "required")),
    ("required guardian block_guardian", lambda: body("block_guardian", guardian_personal_number=...), None,
     ("guardian_personal_number", "required")),
    ("required guardian minor_access to guardian", lambda: body("minor_access", guardian_personal_number=""),
     None, ("guardian_personal_number", "required")),
    ("required minor_access", lambda: body("minor_access", minor_access=...), None, ("minor_access", "required")),
    ("required minor_access.grant", lambda: body("minor_access", minor_access={"recipient": "minor"}), None,
     ("minor_access.grant", "required")),
    ("required minor_access.recipient", lambda: body("minor_access", minor_access={"grant": True}), None,
     ("minor_access.recipient", "required")),
    ("required care unit", lambda: body(care_unit_hsa_id=...), None, ("care_unit_hsa_id", "required")),
    ("required region", lambda: body(region=...), None, ("region", "required")),
    # invalid_value
    ("invalid order_type", lambda: body(order_type="seal"), None, ("order_type", "invalid_value")),
    ("invalid order_type type", lambda: body(order_type=3), None, ("order_type", "invalid_value")),
    ("invalid initiative", lambda: body(initiative="doctor"), None, ("initiative", "invalid_value")),
    ("invalid action", lambda: body(actions=["delete_account"]), None, ("actions", "invalid_value")),
    ("invalid actions not a list", lambda: body(actions="seal_journal"), None, ("actions", "invalid_value")),
    ("invalid region", lambda: body(region="skane"), None, ("region", "invalid_value")),
    ("invalid region for unit", lambda: body(region="stockholm"), None, ("region", "invalid_value")),
    ("invalid urgent", lambda: body(urgent="yes"), None, ("urgent", "invalid_value")),
    ("invalid urgent int", lambda: body(urgent=1), None, ("urgent", "invalid_value")),
    ("invalid protected flag", lambda: body(patient_protected_identity="no"), None,
     ("patient_protected_identity", "invalid_value")),
    ("invalid identity flag", lambda: body(identity_checked_in_person="true"), None,
     ("identity_checked_in_person", "invalid_value")),
    ("invalid reason type", lambda: body(reason=123), None, ("reason", "invalid_value")),
    ("invalid minor_access type", lambda: body("minor_access", minor_access="yes"), None,
     ("minor_access", "invalid_value")),
    ("invalid recipient", lambda: body("minor_access", minor_access={"grant": True, "recipient": "parent"}), None,
     ("minor_access.recipient", "invalid_value")),
    ("invalid grant", lambda: body("minor_access", minor_access={"grant": "yes", "recipient": "minor"}), None,
     ("minor_access.grant", "invalid_value")),
    ("invalid child_consent", lambda: body("minor_access", minor_access={"grant": True, "recipient": "minor",
                                                                         "child_consent": "ja"}), None,
     ("minor_access.child_consent", "invalid_value")),
    # invalid_personal_number
    ("pnr check digit", lambda: body(patient_personal_number="19121212-1213"), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("pnr format", lambda: body(patient_personal_number="abc"), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("pnr too short", lambda: body(patient_personal_number="1212121212"[:9]), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("pnr impossible date", lambda: body(patient_personal_number=f"20010230-985{luhn('010230985')}"), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("pnr future", lambda: body(patient_personal_number=_future(TUESDAY_10)), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("pnr not a string", lambda: body(patient_personal_number=191212121212), None,
     ("patient_personal_number", "invalid_personal_number")),
    ("guardian pnr check digit", lambda: body("block_guardian", guardian_personal_number="19121212-1219"), None,
     ("guardian_personal_number", "invalid_personal_number")),
    ("guardian pnr future", lambda: body("minor_access", guardian_personal_number=_future(TUESDAY_10)), None,
     ("guardian_personal_number", "invalid_personal_number")),
    # not_aged_13_to_15 (boundaries relative to TUESDAY_10)
    ("aged 12, 13th birthday tomorrow", lambda: body("minor_access", patient_personal_number=child(TUESDAY_10, 13, 1)),
     None, ("patient_personal_number", "not_aged_13_to_15")),
    ("aged 16 today", lambda: body("minor_access", patient_personal_number=child(TUESDAY_10, 16, 0)), None,
     ("patient_personal_number", "not_aged_13_to_15")),
    ("aged 16 yesterday", lambda: body("minor_access", patient_personal_number=child(TUESDAY_10, 16, -1)), None,
     ("patient_personal_number", "not_aged_13_to_15")),
    ("adult", lambda: body("minor_access", patient_personal_number=OFFICIAL, guardian_personal_number=...,
                           minor_access={"grant": True, "recipient": "minor"}), None,
     ("patient_personal_number", "not_aged_13_to_15")),
    ("revoke also needs 13-15", lambda: body("minor_access", patient_personal_number=child(TUESDAY_10, 12, -10),
                                             minor_access={"grant": False, "recipient": "minor"}), None,
     ("patient_personal_number", "not_aged_13_to_15")),
    # guardian_is_patient
    ("guardian is patient", lambda: body("block_guardian", patient_personal_number=OFFICIAL,
                                         guardian_personal_number=OFFICIAL), None,
     ("guardian_personal_number", "guardian_is_patient")),
    ("guardian is patient, other spelling", lambda: body("block_guardian", patient_personal_number=OFFICIAL,
                                                         guardian_personal_number="121212+1212"), None,
     ("guardian_personal_number", "guardian_is_patient")),
    ("guardian is patient, minor_access", lambda: body("minor_access",
                                                       guardian_personal_number=child(TUESDAY_10, 14, -40)), None,
     ("guardian_personal_number", "guardian_is_patient")),
    # reason_too_long
    ("reason 2001", lambda: body(reason="x" * 2001), None, ("reason", "reason_too_long")),
    # unknown_care_unit
    ("unknown care unit", lambda: body(care_unit_hsa_id="SE2321000032-NOPE"), None,
     ("care_unit_hsa_id", "unknown_care_unit")),
    ("care unit not a string", lambda: body(care_unit_hsa_id=42), None, ("care_unit_hsa_id", "unknown_care_unit")),
    # care_only
    ("block_guardian patient", lambda: body("block_guardian", initiative="patient"), None, ("initiative", "care_only")),
    ("minor_access patient", lambda: body("minor_access", initiative="patient"), None, ("initiative", "care_only")),
    # identity_check_required
    ("lift own seal without id check", lambda: body("restore_access", initiative="patient", actions=["seal_journal"]),
     PATIENT_SEAL, ("identity_checked_in_person", "identity_check_required")),
    ("lift own seal and lock without id check",
     lambda: body("restore_access", initiative="patient", actions=["seal_journal", "lock_login"],
                  identity_checked_in_person=False), BOTH_BY_PATIENT,
     ("identity_checked_in_person", "identity_check_required")),
    # consent_required
    ("guardian access without consent",
     lambda: body("minor_access", minor_access={"grant": True, "recipient": "guardian", "child_consent": False}),
     None, ("minor_access.child_consent", "consent_required")),
    ("guardian access consent missing", lambda: body("minor_access", minor_access={"grant": True,
                                                                                   "recipient": "guardian"}),
     None, ("minor_access.child_consent", "consent_required")),
    # protected_identity
    ("guardian access to a protected child", lambda: body("minor_access", patient_protected_identity=True), None,
     ("guardian_personal_number", "protected_identity")),
    # care_initiated_restriction
    ("patient lifts care lock", lambda: body("restore_access", initiative="patient", actions=["lock_login"]),
     CARE_LOCK, ("initiative", "care_initiated_restriction")),
    ("patient lifts care seal", lambda: body("restore_access", initiative="patient", actions=["seal_journal"],
                                             identity_checked_in_person=True),
     AccessState(seal=Restriction("care", "stockholm", "RO-2026-000004")),
     ("initiative", "care_initiated_restriction")),
    # nothing_to_restore
    ("nothing in force", lambda: body("restore_access", actions=["seal_journal"]), AccessState(),
     ("actions", "nothing_to_restore")),
    ("seal not in force, lock is", lambda: body("restore_access", actions=["seal_journal", "lock_login"]), CARE_LOCK,
     ("actions", "nothing_to_restore")),
]

CONTRACT_CODES = {
    "required", "invalid_value", "invalid_personal_number", "not_aged_13_to_15", "guardian_is_patient",
    "reason_too_long", "unknown_care_unit", "care_only", "identity_check_required", "consent_required",
    "protected_identity", "care_initiated_restriction", "nothing_to_restore",
}


@pytest.mark.parametrize(("make", "access", "expected"), [(m, a, e) for _, m, a, e in ERROR_ROWS],
                         ids=[n for n, _, _, _ in ERROR_ROWS])
def test_error_code(make: Callable[[], dict[str, Any]], access: AccessState | None,
                    expected: tuple[str, str]) -> None:
    r = check_order(make(), ctx(access=access))
    assert expected in pairs(r), [p.model_dump() for p in r.errors]
    assert not r.ok
    assert r.order is None
    for p in r.errors:
        assert p.message.strip(), p


def test_every_contract_code_has_a_row_and_a_swedish_message() -> None:
    assert {code for *_, (_, code) in ERROR_ROWS} == CONTRACT_CODES
    assert set(MESSAGES) >= CONTRACT_CODES
    assert set(WARNINGS) == {"lock_without_seal", "protected_identity", "outside_office_hours",
                             "duplicate_open_order"}


def test_messages_are_the_contract_messages() -> None:
    r = check_order(body(reason="x" * 2001, care_unit_hsa_id="NOPE"), ctx())
    by_code = {p.code: p.message for p in r.errors}
    assert by_code["reason_too_long"] == MESSAGES["reason_too_long"]
    assert by_code["unknown_care_unit"] == MESSAGES["unknown_care_unit"]


def test_not_an_object() -> None:
    r = check_order(["not", "a", "dict"], ctx())  # type: ignore[arg-type]
    assert [(p.field, p.code) for p in r.errors] == [("", "invalid_value")]


# --- all errors at once -----------------------------------------------------------------------------------

def test_all_errors_at_once() -> None:
    raw = {
        "order_type": "block_guardian",
        "initiative": "patient",                       # care_only
        "patient_personal_number": "19121212-1213",    # invalid_personal_number
        # guardian missing                             # required
        "urgent": "maybe",                             # invalid_value
        "patient_protected_identity": "no",            # invalid_value
        "reason": "x" * 2001,                          # reason_too_long
        "care_unit_hsa_id": "SE-NOT-A-UNIT",           # unknown_care_unit
        "region": "gotland",                           # invalid_value
    }
    got = pairs(check_order(raw, ctx()))
    assert got >= {
        ("initiative", "care_only"),
        ("patient_personal_number", "invalid_personal_number"),
        ("guardian_personal_number", "required"),
        ("urgent", "invalid_value"),
        ("patient_protected_identity", "invalid_value"),
        ("reason", "reason_too_long"),
        ("care_unit_hsa_id", "unknown_care_unit"),
        ("region", "invalid_value"),
    }


def test_all_errors_at_once_minor_access() -> None:
    raw = body("minor_access", patient_personal_number=child(TUESDAY_10, 12, -5),
               guardian_personal_number=child(TUESDAY_10, 12, -5), patient_protected_identity=True,
               minor_access={"grant": True, "recipient": "guardian", "child_consent": False},
               initiative="patient")
    assert pairs(check_order(raw, ctx())) >= {
        ("patient_personal_number", "not_aged_13_to_15"),
        ("guardian_personal_number", "guardian_is_patient"),
        ("minor_access.child_consent", "consent_required"),
        ("guardian_personal_number", "protected_identity"),
        ("initiative", "care_only"),
    }


def test_all_errors_at_once_restore() -> None:
    raw = body("restore_access", initiative="patient", actions=["seal_journal", "lock_login"],
               reason="x" * 2001, care_unit_hsa_id="NOPE")
    assert pairs(check_order(raw, ctx(access=CARE_LOCK))) >= {
        ("identity_checked_in_person", "identity_check_required"),
        ("actions", "nothing_to_restore"),
        ("initiative", "care_initiated_restriction"),
        ("reason", "reason_too_long"),
        ("care_unit_hsa_id", "unknown_care_unit"),
    }


def test_empty_body_reports_every_required_field() -> None:
    got = pairs(check_order({}, ctx()))
    assert got >= {("order_type", "required"), ("initiative", "required"), ("patient_personal_number", "required"),
                   ("care_unit_hsa_id", "required"), ("region", "required")}


def test_missing_guardian_reported_with_invalid_grant() -> None:
    raw = body("minor_access", guardian_personal_number=...,
               minor_access={"grant": "yes", "recipient": "guardian", "child_consent": True})
    got = pairs(check_order(raw, ctx()))
    assert ("minor_access.grant", "invalid_value") in got
    assert ("guardian_personal_number", "required") in got


@pytest.mark.parametrize("bad", [False, 0, []])
def test_falsy_reason_of_wrong_type_is_invalid(bad: Any) -> None:
    assert ("reason", "invalid_value") in pairs(check_order(body(reason=bad), ctx()))


# --- personal numbers: ages, samordningsnummer, normalisation ---------------------------------------------

@pytest.mark.parametrize(("years", "days", "ok"), [
    (13, 1, False),    # 13th birthday tomorrow: 12
    (13, 0, True),     # 13th birthday today
    (13, -1, True),
    (15, 0, True),
    (16, 1, True),     # 16th birthday tomorrow: still 15
    (16, 0, False),    # 16th birthday today
    (16, -1, False),
])
@pytest.mark.parametrize("now", [TUESDAY_10, SATURDAY_10, CHRISTMAS_EVE_10], ids=["tue", "sat", "xmas-eve"])
def test_minor_age_boundaries(now: datetime, years: int, days: int, ok: bool) -> None:
    raw = body("minor_access", patient_personal_number=child(now, years, days))
    got = pairs(check_order(raw, ctx(now)))
    assert (("patient_personal_number", "not_aged_13_to_15") not in got) is ok, got
    assert not {p for p in got if p[0] == "patient_personal_number" and p[1] != "not_aged_13_to_15"}


@pytest.mark.parametrize(("years", "ok"), [(13, True), (16, False)])
def test_age_is_counted_on_the_stockholm_date(years: int, ok: bool) -> None:
    """00:30 in Stockholm is still the day before in UTC: the birthday counts from Stockholm's midnight."""
    now = datetime(2026, 11, 23, 23, 30, tzinfo=UTC)
    assert local(now).date() == date(2026, 11, 24)
    raw = body("minor_access", patient_personal_number=pnr(years_before(date(2026, 11, 24), years), 986))
    got = pairs(check_order(raw, ctx(now)))
    assert (("patient_personal_number", "not_aged_13_to_15") not in got) is ok


def test_samordningsnummer_accepted() -> None:
    adult = years_before(today_in_stockholm(TUESDAY_10), 40) - timedelta(days=3)
    s = pnr(adult, 987, coordination=True)
    r = check_order(body(patient_personal_number=s), ctx())
    assert r.errors == []
    assert r.order is not None
    assert r.order.patient_personal_number == s.replace("-", "")
    assert int(r.order.patient_personal_number[6:8]) == adult.day + 60


def test_samordningsnummer_age_from_birth_date() -> None:
    s = pnr(years_before(today_in_stockholm(TUESDAY_10), 14) - timedelta(days=2), 988, coordination=True)
    r = check_order(body("minor_access", patient_personal_number=s), ctx())
    assert r.errors == []
    s16 = pnr(years_before(today_in_stockholm(TUESDAY_10), 16), 988, coordination=True)
    assert ("patient_personal_number", "not_aged_13_to_15") in pairs(
        check_order(body("minor_access", patient_personal_number=s16), ctx()))


@pytest.mark.parametrize(("given", "stored"), [
    ("121212+1212", OFFICIAL_12),       # 10 digits, '+' for 100 or older
    ("191212121212", OFFICIAL_12),      # 12 digits without separator
    (" 19121212-1212 ", OFFICIAL_12),
])
def test_official_number_normalised(given: str, stored: str) -> None:
    r = check_order(body(patient_personal_number=given), ctx())
    assert r.errors == []
    assert r.order is not None
    assert r.order.patient_personal_number == stored


def test_ten_digit_child_normalised_to_twelve() -> None:
    born = years_before(today_in_stockholm(TUESDAY_10), 14) - timedelta(days=20)
    ten = pnr(born, 989, ten=True)
    assert len(ten.replace("-", "")) == 10
    r = check_order(body("minor_access", patient_personal_number=ten, guardian_personal_number="121212+1212"),
                    ctx())
    assert r.errors == []
    assert r.order is not None
    assert r.order.patient_personal_number == pnr(born, 989).replace("-", "")
    assert len(r.order.patient_personal_number) == 12
    assert r.order.guardian_personal_number == OFFICIAL_12


# --- warnings ------------------------------------------------------------------------------------------------

def test_lock_without_seal_warning() -> None:
    r = check_order(body(actions=["lock_login"]), ctx())
    assert r.ok
    assert "lock_without_seal" in warning_codes(r)
    assert "lock_without_seal" not in warning_codes(check_order(body(), ctx()))
    assert "lock_without_seal" not in warning_codes(check_order(body(actions=["seal_journal"]), ctx()))


def test_protected_identity_warning() -> None:
    r = check_order(body(patient_protected_identity=True), ctx())
    assert r.ok
    assert "protected_identity" in warning_codes(r)
    assert "protected_identity" not in warning_codes(check_order(body(), ctx()))


@pytest.mark.parametrize(("now", "urgent", "warned"), [
    (TUESDAY_10, False, False),
    (SATURDAY_10, False, True),
    (SATURDAY_10, True, False),          # urgent orders are handled out of hours
    (CHRISTMAS_EVE_10, False, True),
    (CHRISTMAS_EVE_10, True, False),
    (datetime(2026, 11, 24, 7, 59, tzinfo=STOCKHOLM), False, True),
    (datetime(2026, 11, 24, 8, 0, tzinfo=STOCKHOLM), False, False),
    (datetime(2026, 11, 24, 16, 29, tzinfo=STOCKHOLM), False, False),
    (datetime(2026, 11, 24, 16, 30, tzinfo=STOCKHOLM), False, True),
    (datetime(2026, 11, 24, 22, 0, tzinfo=STOCKHOLM), False, True),
    (datetime(2026, 11, 24, 9, 0, tzinfo=UTC), False, False),   # 10:00 in Stockholm
    (datetime(2026, 11, 24, 15, 45, tzinfo=UTC), False, True),  # 16:45 in Stockholm
])
def test_outside_office_hours_warning(now: datetime, urgent: bool, warned: bool) -> None:
    r = check_order(body(urgent=urgent), ctx(now))
    assert r.ok
    assert ("outside_office_hours" in warning_codes(r)) is warned


def test_warnings_never_block() -> None:
    r = check_order(body(actions=["lock_login"], patient_protected_identity=True), ctx(SATURDAY_10))
    assert warning_codes(r) == {"lock_without_seal", "protected_identity", "outside_office_hours"}
    assert r.errors == []
    assert r.ok
    assert r.order is not None
    assert r.order.patient_protected_identity is True
    for w in r.warnings:
        assert w.message == WARNINGS[w.code]


def test_warnings_reported_alongside_errors() -> None:
    r = check_order(body(actions=["lock_login"], patient_protected_identity=True, reason="x" * 2001),
                    ctx(SATURDAY_10))
    assert ("reason", "reason_too_long") in pairs(r)
    assert warning_codes(r) == {"lock_without_seal", "protected_identity", "outside_office_hours"}


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        check_order(body(), ctx(datetime(2026, 11, 24, 10, 0)))


# --- a guardian's protected identity (SEED-2: the child *or* the guardian) ----------------------------------

def test_a_protected_guardian_cannot_be_given_access_to_the_childs_journal() -> None:
    r = check_order(body("minor_access", guardian_protected_identity=True), ctx())
    assert pairs(r) == {("guardian_personal_number", "protected_identity")} and r.order is None
    assert "eller vårdnadshavaren" in r.errors[0].message


def test_a_protected_child_or_guardian_both_refuse_the_grant_once() -> None:
    r = check_order(body("minor_access", patient_protected_identity=True, guardian_protected_identity=True), ctx())
    assert [(p.field, p.code) for p in r.errors] == [("guardian_personal_number", "protected_identity")]


@pytest.mark.parametrize(("kind", "extra"), [
    ("block_guardian", {}),
    ("minor_access", {"minor_access": {"grant": False, "recipient": "guardian"}}),  # taking access away
])
def test_other_orders_naming_a_protected_guardian_are_warned_and_stored(kind: str, extra: dict[str, Any]) -> None:
    r = check_order(body(kind, guardian_protected_identity=True, **extra), ctx())
    assert r.ok and r.order is not None and r.order.guardian_protected_identity
    assert [(w.field, w.code) for w in r.warnings] == [("guardian_protected_identity", "protected_identity")]
    assert "hantera per telefon" in r.warnings[0].message


@pytest.mark.parametrize("raw", [
    body("seal_or_lock", guardian_protected_identity=True),  # no guardian on the order: nothing to flag
    body("minor_access", guardian_protected_identity=True, guardian_personal_number=...,
         minor_access={"grant": True, "recipient": "minor"}),
])
def test_the_flag_means_nothing_without_a_guardian_on_the_order(raw: dict[str, Any]) -> None:
    r = check_order(raw, ctx())
    assert r.ok and r.order is not None and not r.order.guardian_protected_identity
    assert "protected_identity" not in warning_codes(r)


@pytest.mark.parametrize("value", ["ja", 1, [True]])
def test_the_guardian_flag_must_be_a_boolean(value: Any) -> None:
    r = check_order(body("block_guardian", guardian_protected_identity=value), ctx())
    assert ("guardian_protected_identity", "invalid_value") in pairs(r)


def test_the_guardian_flag_defaults_to_false() -> None:
    for raw in (body("block_guardian"), body("block_guardian", guardian_protected_identity=False)):
        r = check_order(raw, ctx())
        assert r.order is not None and not r.order.guardian_protected_identity and not r.warnings
