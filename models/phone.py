"""Swedish phone numbers as staff type them (070-123 45 67, 0701234567, +46 70 123 45 67, 010-103 60 00).

Pure. A number is stored normalised as E.164 (`+46701234567`): one spelling for the `tel:` link and for
comparing, whatever separators were typed. It is staff data (the orderer's own number for on-call's
callback), never the patient's, and stays in the orders database like the order's other fields.
"""

from __future__ import annotations

import re

# Separators people type, and the "(0)" of "+46 (0)70 …", which is not dialled after the country code.
_NOISE = re.compile(r"[\s\-–‐./]|\(0\)|[()]")
_DIGITS = re.compile(r"[0-9]+")
# After the trunk 0: 7–9 digits (08-123 45 up to 0980-123 456 and 07X-XXX XX XX), never starting with 0.
_NSN = re.compile(r"[1-9][0-9]{6,8}")


def normalise(text: str) -> str | None:
    """`+46…` for a Swedish number, None for anything else (a foreign number, letters, too short or long)."""
    if len(text) > 40:
        return None
    t = _NOISE.sub("", text.strip())
    for prefix in ("+46", "0046", "0"):
        if t.startswith(prefix):
            nsn = t[len(prefix):]
            break
    else:
        return None
    if prefix != "0" and nsn.startswith("0"):
        nsn = nsn[1:]  # "+46070…": the trunk 0 typed after the country code
    if not (_DIGITS.fullmatch(nsn) and _NSN.fullmatch(nsn)):
        return None
    return "+46" + nsn


def national(e164: str) -> str:
    """As people read it in Sweden: 070-123 45 67, 010-103 60 00, 08-123 456 78; other numbers 0 + digits."""
    if not e164.startswith("+46"):
        return e164
    nsn = e164[3:]
    if len(nsn) == 9 and nsn[0] in "71":  # mobile 07X and the 010 numbers: 3-digit area code
        return f"0{nsn[:2]}-{nsn[2:5]} {nsn[5:7]} {nsn[7:]}"
    if nsn[0] == "8" and len(nsn) in (8, 9):  # Stockholm 08
        rest = nsn[1:]
        return f"08-{rest[:3]} {rest[3:6]} {rest[6:]}" if len(rest) == 8 else f"08-{rest[:3]} {rest[3:5]} {rest[5:]}"
    return "0" + nsn


def tel_href(e164: str) -> str:
    return "tel:" + e164
