"""Order references: exactly RO-YYYY-NNNNNN, so nothing longer typed into an address is ever shown back."""

from __future__ import annotations

import pytest

from models.reference import LAST_NUMBER, ReferencesExhausted, format_reference, is_reference


@pytest.mark.parametrize("text", ["RO-2026-000123", "ro-2026-000123", " RO-2027-999999 "])
def test_references(text: str) -> None:
    assert is_reference(text)


@pytest.mark.parametrize("text", ["RO-2026-0001234", "RO-0000-000000000000", "RO-2026-12345", "RO-26-000123",
                                  "RO-2026-000123x", "19121212-1212", ""])
def test_not_references(text: str) -> None:
    assert not is_reference(text)


def test_format_stops_at_the_last_six_digit_number() -> None:
    assert format_reference(2026, 123) == "RO-2026-000123"
    assert format_reference(2026, LAST_NUMBER) == "RO-2026-999999"
    with pytest.raises(ReferencesExhausted):
        format_reference(2026, LAST_NUMBER + 1)
