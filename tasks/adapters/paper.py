"""Paper forms for the reserve routine (reservrutin): HTML from Jinja2, PDF from WeasyPrint.

When the digital route is down the clinician fills the order in, prints it, signs it and sends it by
internal mail to the region's postal route; urgent orders are also phoned in (DOMAIN.md §3.5, seed 001).
`render_pdf(..., order=None)` gives a blank form, with an order it gives that order pre-filled.

PDF variant: PDF/UA-1 (tagged, accessible). The PDF is a transient step on the way to a signed sheet of
paper; what is archived is the scanned signed form, so PDF/A's long-term guarantees buy little here.
What does matter is that staff using screen readers can fill in and check the form: the Swedish
accessibility law for public digital services (lag 2018:1937) covers documents a region publishes, and
PDF/UA gives a structure tree, a document language (`sv`) and a displayed title. Fonts are embedded in
either variant. The title carries only the reference or the form name, never a personal number.

Enumerated fields of `PaperOrder` carry the API codes (initiative `patient|care`, actions
`seal_journal|lock_login`, recipient `minor|guardian`) so the right boxes can be ticked; everything
else is display text, formatted by the caller.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session
from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration

from models import contacts, personnummer, phone
from models.calendar import local
from models.contacts import callback_clause, phone_text
from models.regions import UNSET_SV, RegionSettings
from models.routine import StagePlan
from models.schemas import ORDER_TYPE_LABELS_SV
from models.tables import Order
from tasks.adapters import directory

ORDER_TYPES = ("seal_or_lock", "restore_access", "block_guardian", "minor_access")
INITIATIVES = ("patient", "care")
ACTIONS = ("seal_journal", "lock_login")
RECIPIENTS = ("minor", "guardian")
PDF_VARIANT = "pdf/ua-1"
DEMO_TEXT = "DEMO – exempeluppgifter, inte för verklig användning"

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "paper"
# Debian's fonts-dejavu-core; a file:// URL so WeasyPrint embeds exactly this font whatever fontconfig says.
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass(frozen=True)
class PaperRegion:
    """What the form prints about the region. A value the region's settings do not give (no source) is
    None or empty here and printed as "Ej inställt – kontakta regionens 1177-förvaltning"."""
    code: str
    name: str
    support_phone: str | None
    support_option: str | None  # menu choice, "2" or "knappval 2"
    postal_route: list[str]     # internal-mail address, one line each
    # The on-call hours the callback promise holds in ("17:00–07:00", "dygnet runt"); the seed routine
    # prints them beside the phone number.
    on_call_window: str | None = None
    # Minutes; "none" when the region promises no callback (its urgent line answers at once); None: not set.
    callback_minutes: int | str | None = None
    demo: bool = False          # the embedded demo: every page says so


@dataclass(frozen=True)
class PaperOrder:
    """A pre-filled order; all strings already formatted for display (enumerations as API codes).

    `reference` is empty for a form filled in and printed before the order was stored (the orders system
    was down): support gives it a reference when the signed form arrives."""

    reference: str
    order_type: str
    initiative: str | None
    actions: list[str]
    patient_personal_number: str
    patient_name: str | None
    patient_protected_identity: bool
    guardian_personal_number: str | None
    minor_access_grant: bool | None
    minor_access_recipient: str | None
    child_consent: bool | None
    identity_checked_in_person: bool
    urgent: bool
    reason: str
    care_unit_hsa_id: str
    care_unit_name: str | None
    orderer_name: str | None
    orderer_hsa_id: str | None
    created_at: str | None
    needs_head_signature: bool
    guardian_protected_identity: bool = False
    # The orderer's number for on-call's callback, as people read it (070-123 45 67); staff data.
    callback_phone: str | None = None


@lru_cache(maxsize=1)
def _env() -> Environment:
    # Autoescape on for every template (the names end in .html.j2, which select_autoescape would miss):
    # reason and names are free text typed by people. StrictUndefined turns a template typo into an error.
    return Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


_local = threading.local()


def _stylesheet() -> tuple[CSS, FontConfiguration]:
    """The form's stylesheet with its fonts loaded, made once per thread.

    Parsing the CSS and loading the @font-face files again for every form costs about 30 ms of a ~120 ms
    render. One per thread because FontConfiguration wraps fontconfig/Pango state that WeasyPrint does
    not promise is thread-safe, and the app renders from a thread pool.
    """
    cached: tuple[CSS, FontConfiguration] | None = getattr(_local, "stylesheet", None)
    if cached is None:
        font_config = FontConfiguration()
        css_text = _env().get_template("paper.css.j2").render(font_dir=FONT_DIR.as_uri())
        cached = _local.stylesheet = (CSS(string=css_text, font_config=font_config), font_config)
    return cached


def _phone_line(region: PaperRegion) -> str:
    return phone_text(region.support_phone, region.support_option)


def _check(order_type: str, order: PaperOrder | None) -> None:
    if order_type not in ORDER_TYPES:
        raise ValueError(f"unknown order type {order_type!r}; expected one of {', '.join(ORDER_TYPES)}")
    if order is None:
        return
    if order.order_type != order_type:
        raise ValueError(f"order {order.reference} is {order.order_type!r}, not {order_type!r}")
    # An unknown code would otherwise leave every box empty and look like a blank answer on paper.
    if order.initiative not in (None, *INITIATIVES):
        raise ValueError(f"unknown initiative {order.initiative!r}")
    if unknown := set(order.actions) - set(ACTIONS):
        raise ValueError(f"unknown actions {sorted(unknown)}")
    if order.minor_access_recipient not in (None, *RECIPIENTS):
        raise ValueError(f"unknown recipient {order.minor_access_recipient!r}")


def _context(order_type: str, region: PaperRegion, order: PaperOrder | None, embed_css: bool) -> dict[str, Any]:
    label = ORDER_TYPE_LABELS_SV[order_type]
    # The title is shown by PDF viewers and browser tabs: reference or form name only, no personal data.
    if order and order.reference:
        title = f"{order.reference} – {label}"
    elif order:
        title = f"{label} – ifylld reservblankett, {region.name}"
    else:
        title = f"{label} – reservblankett, {region.name}"
    return {
        "order_type": order_type, "label": label, "title": title, "region": region, "order": order,
        "phone_line": _phone_line(region), "font_dir": FONT_DIR.as_uri(), "embed_css": embed_css,
        "callback_clause": callback_clause(region.callback_minutes, region.on_call_window),
        "postal_lines": region.postal_route or [UNSET_SV], "demo": region.demo, "demo_text": DEMO_TEXT,
    }


def _html(order_type: str, region: PaperRegion, order: PaperOrder | None, embed_css: bool) -> str:
    _check(order_type, order)
    return _env().get_template(f"{order_type}.html.j2").render(_context(order_type, region, order, embed_css))


def render_html(order_type: str, region: PaperRegion, order: PaperOrder | None = None) -> str:
    """The paper form as a standalone HTML document with its CSS inline (blank when `order` is None)."""
    return _html(order_type, region, order, embed_css=True)


def render_pdf(order_type: str, region: PaperRegion, order: PaperOrder | None = None) -> bytes:
    """The paper form as an A4 PDF/UA-1 document with embedded DejaVu Sans subsets."""
    # Same document as render_html, but the CSS comes pre-parsed from the per-thread stylesheet.
    html = _html(order_type, region, order, embed_css=False)
    css, font_config = _stylesheet()
    # base_url only matters for relative URLs; the template uses none, the font URL is absolute.
    pdf = HTML(string=html, base_url=str(TEMPLATE_DIR)).write_pdf(
        stylesheets=[css], font_config=font_config, pdf_variant=PDF_VARIANT)
    assert pdf is not None  # write_pdf returns bytes when no target is given
    return pdf


__all__ = ["ORDER_TYPES", "PaperOrder", "PaperRegion", "render_html", "render_pdf"]


def paper_region(r: RegionSettings, *, demo: bool = False) -> PaperRegion:
    """What the form prints about the region: its sourced values only (an unset one prints as UNSET_SV)."""
    return PaperRegion(code=r.code, name=r.name, support_phone=r.support_phone.shown,
                       support_option=r.support_option.shown, postal_route=list(r.postal_route.shown or []),
                       on_call_window=r.on_call_hours, callback_minutes=contacts.promise(r), demo=demo)


def paper_order(s: Session, order: Order) -> PaperOrder:
    """A stored order as its pre-filled paper form (the app's PDF and the paper fallback's check alike)."""
    unit = directory.unit(s, order.care_unit_hsa_id)
    orderer = directory.staff(s, order.submitted_by)
    plan = StagePlan.from_json(order.stage_plan)
    return PaperOrder(
        reference=order.reference, order_type=order.order_type, initiative=order.initiative,
        actions=list(order.actions or []),
        patient_personal_number=personnummer.PersonalNumber(order.patient_pnr).formatted(), patient_name=None,
        patient_protected_identity=order.patient_protected,
        guardian_personal_number=personnummer.PersonalNumber(order.guardian_pnr).formatted()
        if order.guardian_pnr else None, guardian_protected_identity=order.guardian_protected,
        minor_access_grant=order.minor_grant, minor_access_recipient=order.minor_recipient,
        child_consent=order.child_consent if order.minor_recipient else None,
        identity_checked_in_person=order.identity_checked, urgent=order.urgent, reason=order.reason or "",
        care_unit_hsa_id=order.care_unit_hsa_id, care_unit_name=unit.name if unit else None,
        orderer_name=orderer.name if orderer else None, orderer_hsa_id=order.submitted_by,
        created_at=f"{local(order.created_at):%Y-%m-%d %H:%M}",
        # Before the run has planned the stages, assume approval is needed: a signature line too many is harmless.
        needs_head_signature=not plan.stages or plan.required("approval"),
        callback_phone=phone.national(order.callback_phone) if order.callback_phone else None,
    )
