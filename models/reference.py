"""Order references, `RO-YYYY-NNNNNN` (api-contract.md): the only identifier that leaves the orders database.

Exactly six digits after the year, never more: a reference is echoed in pages, emails, Prefect run names and
URLs, and a longer digit run typed into an address could be a personal number that would then be shown back.
"""

from __future__ import annotations

import re

REFERENCE = re.compile(r"^RO-[0-9]{4}-[0-9]{6}$", re.IGNORECASE)  # ASCII digits only: \d takes any script's
LAST_NUMBER = 999_999


class ReferencesExhausted(RuntimeError):
    """A year's million references are used up; the format has no room for more."""


def format_reference(year: int, number: int) -> str:
    if not 0 < number <= LAST_NUMBER:
        raise ReferencesExhausted(f"no reference number {number} in {year}")
    return f"RO-{year}-{number:06d}"


def is_reference(text: str) -> bool:
    return bool(REFERENCE.fullmatch(text.strip()))
