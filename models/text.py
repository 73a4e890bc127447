"""Rules for free text a person types (reasons, rationales, notes). Pure.

Bidirectional control characters (embeddings, overrides and isolates, U+202A–U+202E and U+2066–U+2069)
reorder how the text around them is displayed: "U+202E" makes a page or a PDF show text backwards, so a
reason can look like it says something it does not. Nobody types them by hand, so free text refuses them.
"""

from __future__ import annotations

BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
BIDI_CODE = "bidi_control"
BIDI_MESSAGE = ("Texten innehåller osynliga tecken som ändrar textens läsriktning (t.ex. U+202E). "
                "Skriv texten direkt i fältet i stället för att klistra in den.")


def has_bidi_control(value: str) -> bool:
    return any(ch in BIDI_CONTROLS for ch in value)
