"""Swedish personal identity numbers (personnummer) and coordination numbers (samordningsnummer).

Pure functions, no I/O. Contract (other modules rely on exactly these names):

    parse(text: str, today: date) -> PersonalNumber      # raises InvalidPersonalNumber
    PersonalNumber.digits           -> "YYYYMMDDNNNC"    # normalised 12-digit storage form
    PersonalNumber.birth_date       -> date              # for samordningsnummer: day - 60
    PersonalNumber.is_coordination  -> bool
    PersonalNumber.age_on(d: date)  -> int
    PersonalNumber.masked()         -> "YYYYMMDD-****"
    PersonalNumber.formatted()      -> "YYYYMMDD-NNNC"
    mask(digits12: str) -> str                           # same masking for a stored 12-digit string
    luhn_check_digit(nine_digits: str) -> int
    InvalidPersonalNumber(ValueError) with .reason (short English reason, for tests and logs)

Rules: /work/shared/DOMAIN.md section 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

Reason = Literal["format", "date", "check_digit", "future"]

# [0-9] rather than \d: \d also matches non-ASCII digits such as "١".
_INPUT = re.compile(r"(?P<date>[0-9]{6}|[0-9]{8})(?P<sep>[-+]?)(?P<tail>[0-9]{4})")
_STORED = re.compile(r"[0-9]{12}")
_CENTURIES = ("18", "19", "20")
_COORDINATION_OFFSET = 60


class InvalidPersonalNumber(ValueError):
    # The message never contains the rejected input: it ends up in logs and the input is personal data.
    def __init__(self, reason: Reason) -> None:
        super().__init__(f"invalid personal number ({reason})")
        self.reason: Reason = reason


def luhn_check_digit(nine_digits: str) -> int:
    """Modulus-10 check digit over YYMMDDNNN (weights 2,1,2,…; the century is never included)."""
    if not re.fullmatch(r"[0-9]{9}", nine_digits):
        raise InvalidPersonalNumber("format")
    total = 0
    for i, ch in enumerate(nine_digits):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product - 9 if product > 9 else product  # digit sum of a product <= 18
    return (10 - total % 10) % 10


def mask(digits12: str) -> str:
    # Anything that is not the storage form gets no digits at all: better to show too little than leak.
    if not isinstance(digits12, str) or not _STORED.fullmatch(digits12):
        return "****"
    return f"{digits12[:8]}-****"


@dataclass(frozen=True)
class PersonalNumber:
    digits: str  # "YYYYMMDDNNNC"; build through parse() so that it is known to be valid

    @property
    def is_coordination(self) -> bool:
        return int(self.digits[6:8]) > _COORDINATION_OFFSET

    @property
    def birth_date(self) -> date:
        day = int(self.digits[6:8])
        if self.is_coordination:
            day -= _COORDINATION_OFFSET
        return date(int(self.digits[:4]), int(self.digits[4:6]), day)

    def age_on(self, d: date) -> int:
        # A 29 February birthday therefore ages on 1 March in non-leap years (DOMAIN.md §5, open question).
        b = self.birth_date
        return d.year - b.year - (1 if (d.month, d.day) < (b.month, b.day) else 0)

    def masked(self) -> str:
        return mask(self.digits)

    def formatted(self) -> str:
        return f"{self.digits[:8]}-{self.digits[8:]}"


def _resolve_century(yy: int, plus: bool, today: date) -> int:
    # The 10-digit form does not carry the century: `-` means "under 100 this calendar year",
    # `+` means "turns 100 or more this year" (Skatteverket's presentation rule).
    # A `-` date after `today` is therefore a future birth and rejected by the caller, not moved back a
    # century: someone born a hundred years earlier turns 100 this year and is written with `+`.
    year = today.year - (today.year - yy) % 100  # latest year <= today.year ending in yy
    return year - 100 if plus else year


def parse(text: str, today: date) -> PersonalNumber:
    """Parse a personnummer or samordningsnummer (10 or 12 digits) into its 12-digit form."""
    m = _INPUT.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidPersonalNumber("format")
    head, tail = m["date"], m["tail"]
    if tail[:3] == "000":
        raise InvalidPersonalNumber("format")
    month, day = int(head[-4:-2]), int(head[-2:])
    if day > _COORDINATION_OFFSET:
        day -= _COORDINATION_OFFSET  # anything past 91 is left > 31 and rejected as a date below
    if len(head) == 8:
        if head[:2] not in _CENTURIES:
            raise InvalidPersonalNumber("format")
        year = int(head[:4])
    else:
        year = _resolve_century(int(head[:2]), m["sep"] == "+", today)
    try:
        birth = date(year, month, day)
    except ValueError:
        raise InvalidPersonalNumber("date") from None
    short = head[-6:] + tail
    if luhn_check_digit(short[:9]) != int(short[9]):
        raise InvalidPersonalNumber("check_digit")
    if birth > today:
        raise InvalidPersonalNumber("future")
    return PersonalNumber(f"{year // 100:02d}{short}")
