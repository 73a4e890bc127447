"""Paper forms (reservrutin): every order type, blank and pre-filled, read back from the real PDF.

The PDF is checked with the tools a person would trust: `pdftotext -layout` for what is printed,
`qpdf --check` and pypdf for the file itself, `pdftoppm` for a PNG a person can look at.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pypdf
import pytest

from models.regions import load_regions
from models.schemas import ORDER_TYPES as API_ORDER_TYPES
from tasks.adapters.paper import ORDER_TYPES, PaperOrder, PaperRegion, render_html, render_pdf

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "paper"

KALMAR = PaperRegion(code="kalmar", name="Region Kalmar län", support_phone="0480-840 38", support_option="2",
                     postal_route=["Regionstab Kansli", "Strömgatan", "Kalmar"], on_call_window="17:00–07:00",
                     callback_minutes=30)
UNSET = "Ej inställt – kontakta regionens 1177-förvaltning"
# Seed 001, Kalmar's routine: "... knappval 2 (tala in ett meddelande och invänta uppringning inom 30 minuter
# under beredskapstid 17:00-07:00)".
URGENT_CALL = ("Vid akut beställning: ring även 0480-840 38 knappval 2 och invänta uppringning inom 30 minuter "
               "under beredskapstid 17:00–07:00.")
INJECTED = "<script>alert(1)</script><b>x</b>"
PATIENT = "19121212-1212"  # Skatteverket's published test number


def luhn_digit(nine: str) -> int:
    """The personnummer check digit over YYMMDDNNN (weights 2,1,2,1,...; digits of products summed)."""
    total = sum(sum(divmod(int(d) * (2 - i % 2), 10)) for i, d in enumerate(nine))
    return (10 - total % 10) % 10


GUARDIAN = f"19800101-123{luhn_digit('800101123')}"

LABELS = {
    "common": ["Reservrutin för 1177 journal och e-tjänster", "Personnummer/samordningsnummer", "Namn",
               "Skyddade personuppgifter", "Initiativ", "Akut beställning", "Skäl till beställningen",
               "Vårdenhet", "Vårdenhetens HSA-id", "Beställarens namn", "Beställarens HSA-id",
               "Telefon för återuppringning", "Datum för beställning", "Underskrifter", "Underskrift",
               "Namnförtydligande", "Datum", "Fylls i av support",
               "Internpost till", "Support: 0480-840 38 knappval 2"],
    "seal_or_lock": ["Försegling och/eller låsning", "Enskilds önskemål",
                     "På begäran av hälso- och sjukvårdspersonal", "Åtgärd (en eller båda)",
                     "Försegla 1177 journal", "Låsa inloggning till 1177 e-tjänster"],
    "restore_access": ["Återställande av direktåtkomst", "Enskilds önskemål",
                       "På begäran av hälso- och sjukvårdspersonal", "Åtgärd (en eller båda)",
                       "Bryta försegling av 1177 journal", "Låsa upp inloggning till 1177 e-tjänster",
                       "Identitetskontroll", "Patientens identitet är kontrollerad vid personligt besök"],
    "block_guardian": ["Borttagande av direktåtkomst för vårdnadshavare", "Barnet (patient)",
                       "Vårdens initiativ", "Vårdnadshavare vars direktåtkomst tas bort – personnummer"],
    "minor_access": ["Ge eller ta bort tillgång till minderårigs journal (13–15 år)", "Barnet (patient, 13–15 år)",
                     "Vårdens initiativ", "Beslut", "Ge tillgång", "Ta bort tillgång", "Tillgång för",
                     "Barnet självt", "Vårdnadshavare", "Vårdnadshavarens personnummer", "Barnets samtycke"],
}

# What each pre-filled order must show ticked (☒) and what it must leave empty (☐).
TICKS: dict[str, tuple[list[str], list[str]]] = {
    "seal_or_lock": (["På begäran av hälso- och sjukvårdspersonal", "Försegla 1177 journal",
                      "Låsa inloggning till 1177 e-tjänster", "Ja – hanteras per telefon"], ["Enskilds önskemål"]),
    "restore_access": (["Enskilds önskemål", "Bryta försegling av 1177 journal",
                        "Patientens identitet är kontrollerad vid personligt besök"],
                       ["På begäran av hälso- och sjukvårdspersonal", "Låsa upp inloggning till 1177 e-tjänster",
                        "Ja – hanteras per telefon"]),
    "block_guardian": ([], ["Ja – hanteras per telefon"]),
    "minor_access": (["Ge tillgång", "Vårdnadshavare"], ["Ta bort tillgång", "Barnet självt"]),
}


def order_for(order_type: str) -> PaperOrder:
    """One realistic pre-filled order per type; urgent and seal_or_lock with protected identity."""
    base = PaperOrder(
        reference="RO-2026-000123", order_type=order_type, initiative="care", actions=[],
        patient_personal_number=PATIENT, patient_name="Tolvan Tolvansson", patient_protected_identity=False,
        guardian_personal_number=None, minor_access_grant=None, minor_access_recipient=None, child_consent=None,
        identity_checked_in_person=False, urgent=False, reason=f"Hot mot patienten {INJECTED}\nRad två",
        care_unit_hsa_id="SE2321000032-1003", care_unit_name="Psykiatrimottagningen Kalmar",
        orderer_name="Anna Andersson", orderer_hsa_id="SE2321000032-AB12", created_at="2026-11-21 14:05",
        needs_head_signature=True)
    if order_type == "seal_or_lock":
        return replace(base, actions=["seal_journal", "lock_login"], patient_protected_identity=True, urgent=True)
    if order_type == "restore_access":
        return replace(base, initiative="patient", actions=["seal_journal"], identity_checked_in_person=True,
                       needs_head_signature=False)
    if order_type == "block_guardian":
        return replace(base, guardian_personal_number=GUARDIAN, urgent=True)
    return replace(base, guardian_personal_number=GUARDIAN, minor_access_grant=True,
                   minor_access_recipient="guardian", child_consent=True)


@cache
def pdf_of(order_type: str, filled: bool) -> bytes:
    return render_pdf(order_type, KALMAR, order_for(order_type) if filled else None)


def pdf_path(order_type: str, filled: bool) -> Path:
    """The PDF kept under tests/artifacts/paper/, next to its PNG, for a person to open."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{order_type}-{'filled' if filled else 'blank'}.pdf"
    path.write_bytes(pdf_of(order_type, filled))
    return path


@cache
def text_of(order_type: str, filled: bool) -> str:
    """Printed text, whitespace runs (incl. the no-break space after a box) folded to one space per line."""
    out = subprocess.run(["pdftotext", "-layout", str(pdf_path(order_type, filled)), "-"],
                         check=True, capture_output=True, text=True).stdout
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in out.splitlines())


@cache
def flat_text_of(order_type: str, filled: bool) -> str:
    """Printed text in reading order on one line, for sentences that wrap inside their box."""
    out = subprocess.run(["pdftotext", str(pdf_path(order_type, filled)), "-"],
                         check=True, capture_output=True, text=True).stdout
    return re.sub(r"\s+", " ", out)


def structure_tags(node: Any) -> list[str]:
    """The structure types of a PDF structure tree, depth first."""
    out: list[str] = []
    node = node.get_object()
    if "/S" in node:
        out.append(str(node["/S"]))
    kids = node.get("/K")
    for kid in kids if isinstance(kids, list) else [kids]:
        if isinstance(kid, pypdf.generic.IndirectObject | pypdf.generic.DictionaryObject):
            out += structure_tags(kid)
    return out


CASES = [pytest.param(t, filled, id=f"{t}-{'filled' if filled else 'blank'}")
         for t in ORDER_TYPES for filled in (False, True)]


def test_order_types_match_the_api() -> None:
    assert ORDER_TYPES == API_ORDER_TYPES


@pytest.mark.parametrize(("order_type", "filled"), CASES)
def test_pdf_is_valid_a4_with_embedded_fonts(order_type: str, filled: bool) -> None:
    path = pdf_path(order_type, filled)
    check = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    reader = pypdf.PdfReader(io.BytesIO(pdf_of(order_type, filled)))
    assert 1 <= len(reader.pages) <= 2
    fonts = 0
    for page in reader.pages:
        assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == (595, 842)
        resources: Any = page["/Resources"]
        for ref in resources["/Font"].values():
            font: Any = ref.get_object()
            descendant = font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
            assert "/FontFile2" in descendant["/FontDescriptor"].get_object(), font["/BaseFont"]
            # The @font-face family (DejaVu Sans from its file), not whatever fontconfig would pick.
            assert "+Form-Sans" in font["/BaseFont"], font["/BaseFont"]
            fonts += 1
    assert fonts >= 2  # regular and bold


@pytest.mark.parametrize(("order_type", "filled"), CASES)
def test_pdf_is_tagged_swedish_pdf_ua_with_a_title_free_of_personal_data(order_type: str, filled: bool) -> None:
    reader = pypdf.PdfReader(io.BytesIO(pdf_of(order_type, filled)))
    root: Any = reader.trailer["/Root"]
    assert root["/Lang"] == "sv"
    assert bool(root["/MarkInfo"]["/Marked"])
    assert "/StructTreeRoot" in root
    assert bool(root["/ViewerPreferences"]["/DisplayDocTitle"])
    assert b"pdfuaid" in root["/Metadata"].get_object().get_data()
    # A real structure tree, not an empty shell: headings and lists tagged, a parent tree for the content,
    # and tab order following the structure on every page (PDF/UA-1 7.1, 7.18.3).
    tree: Any = root["/StructTreeRoot"].get_object()
    assert "/ParentTree" in tree
    tags = structure_tags(tree)
    assert tags[0] == "/Document" and {"/H1", "/H2", "/P", "/L", "/LI"} <= set(tags), sorted(set(tags))
    assert all(page.get("/Tabs") == "/S" and "/StructParents" in page for page in reader.pages)
    title = reader.metadata.title if reader.metadata else None
    assert title
    assert not re.search(r"\d{6,8}[-+]?\d{4}", title), title  # nothing shaped like a personal number
    assert PATIENT[2:8] not in title and GUARDIAN[2:8] not in title
    assert ("RO-2026-000123" in title) if filled else ("reservblankett" in title)


@pytest.mark.parametrize(("order_type", "filled"), CASES)
def test_every_label_postal_route_and_phone_is_printed(order_type: str, filled: bool) -> None:
    text = text_of(order_type, filled)
    for label in LABELS["common"] + LABELS[order_type] + KALMAR.postal_route:
        assert label in text, label
    if filled:
        assert "Referens: fylls i av supporten" not in text
    else:
        assert "Referens: fylls i av supporten" in text
        assert "☒" not in text  # nothing is ticked on a blank form
    if not filled or order_for(order_type).needs_head_signature:
        assert "Godkännande – Verksamhetschef/bakjour" in text


@pytest.mark.parametrize("order_type", ORDER_TYPES)
def test_blank_forms_always_tell_how_to_phone_in_an_urgent_order(order_type: str) -> None:
    assert f"{URGENT_CALL} Fyll därefter i och skicka in blanketten." in flat_text_of(order_type, False)


@pytest.mark.parametrize("order_type", ORDER_TYPES)
def test_prefilled_values_and_ticks_are_printed(order_type: str) -> None:
    order = order_for(order_type)
    text = text_of(order_type, True)
    values = [order.reference, order.patient_personal_number, "Tolvan Tolvansson", order.care_unit_hsa_id,
              "Psykiatrimottagningen Kalmar", "Anna Andersson", "SE2321000032-AB12", "2026-11-21 14:05",
              f"Hot mot patienten {INJECTED}", "Rad två"]
    if order.guardian_personal_number:
        values.append(GUARDIAN)
    for value in values:
        assert value in text, value
    ticked, unticked = TICKS[order_type]
    for label in ticked:
        assert f"☒ {label}" in text, label
    for label in unticked:
        assert f"☐ {label}" in text, label
    urgent_box = "☒ Ja ☐ Nej" if order.urgent else "☐ Ja ☒ Nej"
    assert re.search(rf"Akut beställning.*\n.*{urgent_box}", text), "urgent Ja/Nej"
    assert (URGENT_CALL in flat_text_of(order_type, True)) == order.urgent
    assert ("Verksamhetschef/bakjour" in text) == order.needs_head_signature


def test_reference_is_printed_in_large_type() -> None:
    reader = pypdf.PdfReader(io.BytesIO(pdf_of("seal_or_lock", True)))
    sizes: list[tuple[str, float]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text.strip():  # font size in points = Tf size scaled by the text and page matrices
            sizes.append((text.strip(), size * tm[0] * cm[0]))
    reader.pages[0].extract_text(visitor_text=visit)
    reference = max(size for text, size in sizes if text == "RO-2026-000123")
    assert reference >= 18
    assert reference == max(size for _, size in sizes)  # the largest text on the page


def test_free_text_is_escaped_in_html_and_literal_in_pdf() -> None:
    html = render_html("seal_or_lock", KALMAR, order_for("seal_or_lock"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in html
    assert "<script>" not in html and "<b>x" not in html
    assert INJECTED in text_of("seal_or_lock", True)


def test_html_is_a_swedish_document_titled_by_reference() -> None:
    html = render_html("minor_access", KALMAR, order_for("minor_access"))
    assert '<html lang="sv">' in html
    assert 'src: url("file:///usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")' in html  # standalone: CSS inline
    title = re.search(r"<title>(.*?)</title>", html)
    assert title and title.group(1).startswith("RO-2026-000123 – Ge eller ta bort")
    assert PATIENT not in title.group(1)


def test_a_long_reason_spills_to_a_second_page_at_most() -> None:
    order = replace(order_for("minor_access"), reason=("Lång motivering med många ord. " * 70)[:2000])
    reader = pypdf.PdfReader(io.BytesIO(render_pdf("minor_access", KALMAR, order)))
    assert len(reader.pages) == 2


@pytest.mark.parametrize(("option", "printed"), [("2", "0480-840 38 knappval 2"),
                                                 ("knappval 2", "0480-840 38 knappval 2"),
                                                 (None, "Support: 0480-840 38")])
def test_support_option_is_printed_once_in_the_seed_wording(option: str | None, printed: str) -> None:
    html = render_html("seal_or_lock", replace(KALMAR, support_option=option))
    assert printed in html
    assert "knappval knappval" not in html


def test_other_regions_postal_route_is_used() -> None:
    region = PaperRegion(code="uppsala", name="Region Uppsala", support_phone="018-611 00 00",
                         support_option=None, postal_route=["Servicedesk", "Box 1", "Uppsala"])
    html = render_html("block_guardian", region)
    for line in ["Region Uppsala", "018-611 00 00", "Servicedesk", "Box 1", "Uppsala"]:
        assert line in html


def flat(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_ostergotland_prints_its_24_7_number_and_no_callback_promise() -> None:
    from tasks.adapters.paper import paper_region
    region = paper_region(load_regions()["ostergotland"])
    assert (region.support_phone, region.callback_minutes, region.on_call_window) == ("010-103 6000", "none",
                                                                                       "dygnet runt")
    for order_type in ORDER_TYPES:
        text = flat(render_html(order_type, region))
        assert "Vid akut beställning: ring även 010-103 6000 (dygnet runt)." in text
        assert "invänta uppringning" not in text and "minuter" not in text
        # The seeds give Östergötland no internal-mail route: the form says so instead of inventing one.
        assert f"Internpost till {UNSET}" in text


@pytest.mark.parametrize("code", ["jonkoping", "stockholm"])
def test_unset_values_are_printed_as_not_set_never_as_a_number(code: str) -> None:
    from tasks.adapters.paper import paper_region
    text = flat(render_html("seal_or_lock", paper_region(load_regions()[code])))
    assert f"Vid akut beställning: ring även {UNSET} och invänta uppringning (tid för uppringning: {UNSET})." in text
    assert f"Support: {UNSET}" in text and f"Internpost till {UNSET}" in text
    assert not re.search(r"\d{3}-\d", text.split("1. ")[0])  # no phone number before the form's fields


def test_the_demo_marks_every_page_of_the_pdf() -> None:
    order = replace(order_for("minor_access"), reason=("Lång motivering med många ord. " * 70)[:2000])
    demo = "DEMO – exempeluppgifter, inte för verklig användning"
    pages = pypdf.PdfReader(io.BytesIO(render_pdf("minor_access", replace(KALMAR, demo=True), order))).pages
    assert len(pages) == 2 and all(demo in p.extract_text() for p in pages)
    assert demo not in pypdf.PdfReader(io.BytesIO(render_pdf("minor_access", KALMAR, order))).pages[0].extract_text()


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown order type"):
        render_html("seal", KALMAR)
    with pytest.raises(ValueError, match="unknown order type"):
        render_pdf("seal", KALMAR)
    with pytest.raises(ValueError, match="not 'restore_access'"):
        render_html("restore_access", KALMAR, order_for("seal_or_lock"))
    with pytest.raises(ValueError, match="unknown actions"):
        render_html("seal_or_lock", KALMAR, replace(order_for("seal_or_lock"), actions=["Försegla"]))
    with pytest.raises(ValueError, match="unknown initiative"):
        render_html("seal_or_lock", KALMAR, replace(order_for("seal_or_lock"), initiative="vården"))
    with pytest.raises(ValueError, match="unknown recipient"):
        render_html("minor_access", KALMAR, replace(order_for("minor_access"), minor_access_recipient="child"))


def test_weasyprint_reports_no_problems(caplog: pytest.LogCaptureFixture) -> None:
    """A font that fails to load or a missing lang/title is only logged by WeasyPrint, so watch the log."""
    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        render_pdf("restore_access", KALMAR, order_for("restore_access"))
        render_pdf("block_guardian", KALMAR)
    assert not [r for r in caplog.records if r.name.startswith("weasyprint")]


def test_forms_render_from_several_threads() -> None:
    """The app renders from a thread pool; each thread builds its own stylesheet and font configuration."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        pdfs = list(pool.map(lambda t: render_pdf(t, KALMAR, order_for(t)), ORDER_TYPES * 2))
    for order_type, pdf in zip(ORDER_TYPES * 2, pdfs, strict=True):
        text = pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
        assert "RO-2026-000123" in text and order_for(order_type).patient_personal_number in text


@pytest.mark.parametrize(("order_type", "filled"), CASES)
def test_first_page_is_saved_as_png_for_review(order_type: str, filled: bool) -> None:
    path = pdf_path(order_type, filled)
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", str(path),
                    str(path.with_suffix(""))], check=True)
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_urgent_instruction_takes_the_on_call_window_and_callback_time_from_the_region_settings() -> None:
    from models.regions import load_regions  # regions.toml, as the composition root hands it to the app
    from tasks.adapters.paper import paper_region  # as the app and the fallback step print it
    kalmar = paper_region(load_regions()["kalmar"])
    assert (kalmar.on_call_window, kalmar.callback_minutes) == ("17:00–07:00", 30)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_html("seal_or_lock", kalmar)))
    assert URGENT_CALL in text
    other = replace(kalmar, on_call_window="16:30–08:00", callback_minutes=20)
    assert "inom 20 minuter under beredskapstid 16:30–08:00." in render_html("block_guardian", other)
    # On-call hours without a source are not printed as hours.
    unset_hours = flat(render_html("block_guardian", replace(kalmar, on_call_window=None)))
    assert f"inom 30 minuter (beredskapstid: {UNSET})." in unset_hours
