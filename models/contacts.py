"""How a region's contact values read on pages, paper forms and emails (Swedish), unset ones included.

One place for the wording, so a value without a source reads the same everywhere ("Ej inställt – kontakta
regionens 1177-förvaltning") and no text promises a callback the region's settings do not give. Pure
functions of the settings (models/regions.py); no I/O.
"""

from __future__ import annotations

from models.regions import NO_PROMISE, UNSET_SV, RegionSettings

ALL_DAY = "dygnet runt"
Promise = int | str | None  # minutes, NO_PROMISE, or None when not set


def phone_text(phone: str | None, option: str | None, sep: str = " ") -> str:
    """'0480-840 38 knappval 2' (the seed's wording); UNSET_SV when the number is not set."""
    if not phone:
        return UNSET_SV
    option = (option or "").strip()
    if option.isdigit():  # settings may hold just the digit; the seed's wording is "knappval 2"
        option = f"knappval {option}"
    return f"{phone}{sep}{option}" if option else phone


def support_phone_text(r: RegionSettings, sep: str = " ") -> str:
    return phone_text(r.support_phone.shown, r.support_option.shown, sep)


def postal_lines(r: RegionSettings) -> list[str]:
    """The internal-mail route, one line each; [UNSET_SV] when it is not set."""
    return list(r.postal_route.shown or [UNSET_SV])


def promise(r: RegionSettings) -> Promise:
    v = r.callback_minutes.shown
    return v if isinstance(v, int | str) else None


def callback_clause(callback: Promise, on_call_hours: str | None) -> str:
    """What follows the support number in the paper form's and the fallback email's urgent instruction:
    'och invänta uppringning inom 30 minuter under beredskapstid 17:00–07:00' (SEED-1's wording)."""
    if callback == NO_PROMISE:  # the line is answered at once: nobody waits for a callback
        if on_call_hours == ALL_DAY:
            return f"({ALL_DAY})"
        return f"(beredskapstid {on_call_hours})" if on_call_hours else ""
    if callback is None:
        return f"och invänta uppringning (tid för uppringning: {UNSET_SV})"
    if on_call_hours is None:
        hours = f" (beredskapstid: {UNSET_SV})"
    else:
        hours = "" if on_call_hours == ALL_DAY else f" under beredskapstid {on_call_hours}"
    return f"och invänta uppringning inom {callback} minuter{hours}"


def region_callback_clause(r: RegionSettings) -> str:
    return callback_clause(promise(r), r.on_call_hours)


def urgent_call_instruction(r: RegionSettings) -> str:
    """'ring också supporten på 0480-840 38 knappval 2 och invänta uppringning inom 30 minuter under
    beredskapstid 17:00–07:00' (fallback email)."""
    clause = region_callback_clause(r)
    return f"ring också supporten på {support_phone_text(r)}" + (f" {clause}" if clause else "")


def staff_callback_line(r: RegionSettings, due: str, started: str) -> str:
    """The page's instruction to on-call or support, with the callback clock's deadline and start."""
    minutes = r.callback_deadline_minutes
    p = promise(r)
    if p == NO_PROMISE:
        return (f"Regionen lovar ingen uppringning: beställaren ringer den brådskande linjen. Registrera kontakten "
                f"med beställaren senast {due} ({minutes} minuter från {started}).")
    line = f"Ring upp beställaren senast {due} ({minutes} minuter från {started})."
    if p is None:
        line += f" Utlovad tid för uppringning: {UNSET_SV}."
    return line


def staff_urgent_summary(r: RegionSettings) -> str:
    """One sentence for the person who makes an order urgent: who is paged and what the orderer can expect."""
    minutes = r.callback_deadline_minutes
    p = promise(r)
    if p == NO_PROMISE:
        return (f"Beredskapen larmas direkt. Regionen lovar ingen uppringning (den brådskande linjen svarar "
                f"direkt); registrera kontakten med beställaren inom {minutes} minuter.")
    if p is None:
        return (f"Beredskapen (eller supportkön under kontorstid) larmas direkt och kontakten med beställaren ska "
                f"registreras inom {minutes} minuter. Utlovad tid för uppringning: {UNSET_SV}.")
    return (f"Beredskapen (eller supportkön under kontorstid) larmas direkt och beställaren ska ringas upp "
            f"inom {p} minuter.")
