"""The pages in a real browser (Debian's /usr/bin/chromium via Playwright): log in, order each type, see
the receipt, decide in the queues. axe-core checks every page against WCAG 2.0/2.1 A and AA, and a
full-page screenshot of each lands in tests/artifacts/pages/<name>.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from models.tables import Order, RegistryPerson
from tasks.database import session

pytest.register_assert_rewrite("tests.webapp")  # imported here and loaded as a plugin: rewrite its asserts
from tests.webapp import PATIENT, born_years_ago, client, pnr, staff, wait_status  # noqa: E402

pytest_plugins = ["tests.webapp"]
pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"]
WCAG = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
        "resultTypes": ["violations", "incomplete"]}
SHOTS = Path(__file__).resolve().parent / "artifacts" / "pages"
AXE_JS = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_URL = "/__tests__/axe.min.js"  # never reaches the app: the browser context answers it
PNR_SHAPE = re.compile(r"(?:\d{6}|\d{8})[-+]?\d{4}")
AXE_LOG: dict[str, dict[str, Any]] = {}
CLINICIAN = staff("clinician")


@pytest.fixture(scope="module")
def browser(live_app: str) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "axe-summary.json").write_text(json.dumps(AXE_LOG, indent=2, ensure_ascii=False), encoding="utf-8")


def run_axe(page: Any) -> dict[str, Any]:
    """axe-core from the npm registry (tests/axe, `npm ci` by the Makefile) in the page, WCAG 2.1 A+AA."""
    if not AXE_JS.exists():
        pytest.fail(f"{AXE_JS} is missing: run `make pytest` (or `npm ci --prefix tests/axe`)")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # From a same-origin address the browser context answers with the file (Visitor): the pages' CSP
        # (script-src 'self', no inline script) stays on, and `add_script_tag(path=...)` would be inline.
        origin = "/".join(page.url.split("/")[:3])
        page.add_script_tag(url=origin + AXE_URL)
    result: dict[str, Any] = page.evaluate("options => axe.run(document, options)", WCAG)
    return result


def axe_report(violations: list[dict[str, Any]]) -> str:
    return "\n".join(f"{v['id']} ({v['impact']}): {v['help']} – " + ", ".join(str(n["target"]) for n in v["nodes"][:5])
                     for v in violations)


class Visitor:
    """One person in their own browser context (own cookies)."""

    def __init__(self, browser: Any, base: str, *, javascript: bool = True) -> None:
        self.base, self.javascript = base, javascript
        self.context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="sv-SE",
                                           java_script_enabled=javascript)
        self.context.route(f"{base}{AXE_URL}", lambda route: route.fulfill(
            path=str(AXE_JS), content_type="application/javascript; charset=utf-8"))
        self.page = self.context.new_page()

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def login(self, hsa_id: str, name: str) -> None:
        self.goto("/login")
        self.page.get_by_role("button", name=f"Logga in som {name}", exact=True).click()
        self.page.wait_for_url(self.base + "/")

    def check(self, name: str) -> None:
        """axe-core (WCAG 2.0/2.1 A+AA) on the current page, a screenshot, and the rules every page keeps."""
        page = self.page
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        result = run_axe(page)
        violations, incomplete = result["violations"], result["incomplete"]
        AXE_LOG[name] = {"url": page.url.replace(self.base, ""), "violations": len(violations),
                         "incomplete": sorted(r["id"] for r in incomplete),
                         "incomplete_detail": [{"id": r["id"], "help": r["help"],
                                                "targets": [n["target"] for n in r["nodes"]][:5]} for r in incomplete]}
        assert not violations, f"{name}: {axe_report(violations)}"
        assert page.locator("html").get_attribute("lang") == "sv"
        assert page.locator("main#main").count() == 1 and page.locator("a.skip-link[href='#main']").count() == 1
        assert not PNR_SHAPE.search(page.title()) and not PNR_SHAPE.search(page.url), (page.title(), page.url)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Any, live_app: str) -> Iterator[Any]:
    made: list[Visitor] = []

    def make(hsa_id: str | None = None, name: str = "", javascript: bool = True) -> Visitor:
        v = Visitor(browser, live_app, javascript=javascript)
        if hsa_id:
            v.login(hsa_id, name)
        made.append(v)
        return v
    yield make
    for v in made:
        v.close()


def orders_for(pnr12: str) -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).select_from(Order).where(Order.patient_pnr == pnr12)) or 0)


def patient_sealed_on_own_request(p: str) -> None:
    with session() as s:
        s.merge(RegistryPerson(pnr=p.replace("-", ""), sealed_by_initiative="patient", sealed_by_region="kalmar",
                               sealed_by_order="RO-2026-000000", blocked_guardians=[], minor_access=[]))


# --- login and start ----------------------------------------------------------------------------------

def test_login_and_start_page(visit: Any) -> None:
    v = visit()
    v.goto("/bestallningar")
    assert "/login?next=/bestallningar" in v.page.url
    v.check("login")
    v.page.get_by_role("button", name="Logga in som Klinikern (Region Kalmar län)", exact=True).click()
    v.page.wait_for_url("**/bestallningar")
    v.goto("/")
    for label in ("Försegling och/eller låsning", "Återställande av direktåtkomst",
                  "Borttagande av direktåtkomst för vårdnadshavare",
                  "Ge eller ta bort tillgång till minderårigs journal (13–15 år)"):
        assert v.page.get_by_role("link", name=label, exact=True).count() == 1
    v.check("start")


# --- the four forms -----------------------------------------------------------------------------------

def _errors_then_fix(v: Visitor, order_type: str) -> None:
    page = v.page
    v.goto(f"/bestall/{order_type}")
    v.check(f"form-{order_type}")
    page.get_by_role("button", name="Skicka beställningen").click()
    summary = page.locator(".error-summary")
    summary.wait_for()
    assert page.title().startswith("Fel: ")
    links = summary.locator("a")
    assert links.count() >= 1
    for i in range(links.count()):  # every summary link points at an input on the page
        href = links.nth(i).get_attribute("href") or ""
        assert href.startswith("#") and page.locator(href).count() == 1, href
    assert page.locator(".field-error:not([hidden])").count() >= 1
    v.check(f"form-{order_type}-errors")


def _receipt(v: Visitor, order_type: str) -> str:
    page = v.page
    page.wait_for_url(re.compile(r".*/bestallningar/RO-\d{4}-\d+/kvitto.*"))
    assert page.get_by_role("heading", level=1).inner_text() == "Beställningen är skickad"
    ref = page.locator(".reference").inner_text()
    assert re.fullmatch(r"RO-\d{4}-\d{6}", ref)
    assert re.search(r"(måndag|tisdag|onsdag|torsdag|fredag|lördag|söndag) \d{1,2} \w+ \d{4} kl\. \d\d\.\d\d",
                     page.locator(".summary-list").inner_text())
    v.check(f"receipt-{order_type}")
    return ref


def test_seal_or_lock_urgent_with_errors_kept_values_and_phone_receipt(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    _errors_then_fix(v, "seal_or_lock")
    page = v.page
    patient = pnr()
    page.get_by_label("Patientens personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Skäl till beställningen").fill('Hot <b>"mot"</b> patienten')
    page.get_by_role("button", name="Skicka beställningen").click()
    page.locator(".error-summary").wait_for()
    # Entered values are kept after a failed submit.
    assert page.get_by_label("Patientens personnummer eller samordningsnummer").input_value() == patient
    assert page.get_by_label("Skäl till beställningen").input_value() == 'Hot <b>"mot"</b> patienten'
    page.get_by_label("Vårdens initiativ").check()
    page.get_by_label("Låsa inloggning till 1177 e-tjänster").check()
    expect(page.locator("#live-warnings")).to_contain_text("direktlänk")  # live validation's warning
    page.get_by_label("Försegla 1177 journal").check()
    page.get_by_label("Beställningen är brådskande").check()
    page.get_by_role("button", name="Skicka beställningen").click()
    _receipt(v, "seal_or_lock")
    urgent = page.locator(".urgent-box").inner_text()
    assert "Ring supporten nu" in urgent and "0480-840 38, knappval 2" in urgent and "30 minuter" in urgent
    assert page.locator(".urgent-box a[href^='tel:+46']").count() == 1


def test_restore_access_shows_the_identity_check_only_when_it_applies(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    _errors_then_fix(v, "restore_access")
    page = v.page
    patient = pnr()
    patient_sealed_on_own_request(patient)
    identity = page.get_by_label("Patientens identitet är kontrollerad vid personligt besök")
    page.get_by_label("Vårdens initiativ").check()
    assert not identity.is_visible()
    page.get_by_label("Patientens önskemål").check()
    page.get_by_label("Bryta försegling av 1177 journal").check()
    assert identity.is_visible()
    page.get_by_label("Patientens personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Skäl till beställningen").fill("Patienten vill åter läsa sin journal")
    page.get_by_role("button", name="Skicka beställningen").click()
    page.locator(".error-summary").wait_for()
    assert "identitetskontroll" in page.locator(".error-summary").inner_text()
    page.get_by_label("Patientens identitet är kontrollerad vid personligt besök").check()
    page.get_by_role("button", name="Skicka beställningen").click()
    _receipt(v, "restore_access")
    assert page.locator(".urgent-box").count() == 0


def test_block_guardian(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    _errors_then_fix(v, "block_guardian")
    page = v.page
    assert page.get_by_label("Vårdens initiativ").count() == 0  # care-only: no choice to make
    page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(9)))
    page.get_by_label("Vårdnadshavarens personnummer (den vars direktåtkomst tas bort)").fill(pnr(born_years_ago(40)))
    page.get_by_label("Skäl till beställningen").fill("Orosanmälan")
    page.get_by_role("button", name="Skicka beställningen").click()
    _receipt(v, "block_guardian")


def test_minor_access_with_guardian_fields_shown_on_demand(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    _errors_then_fix(v, "minor_access")
    page = v.page
    guardian = page.get_by_label("Vårdnadshavarens personnummer")
    consent = page.get_by_label("Barnet har samtyckt till att vårdnadshavaren får tillgång")
    page.get_by_label("Barnet självt").check()
    assert not guardian.is_visible() and not consent.is_visible()
    page.get_by_label("Ge tillgång", exact=True).check()
    page.get_by_label("Vårdnadshavare", exact=True).check()
    assert guardian.is_visible() and consent.is_visible()
    page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(14)))
    guardian.fill(pnr(born_years_ago(44)))
    consent.check()
    page.get_by_label("Skäl till beställningen").fill("Särskilda skäl: funktionsnedsättning")
    page.get_by_role("button", name="Skicka beställningen").click()
    _receipt(v, "minor_access")


def test_without_javascript_every_field_shows_and_a_double_click_makes_one_order(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)", javascript=False)
    page = v.page
    v.goto("/bestall/minor_access")
    child = pnr(born_years_ago(13))
    assert page.get_by_label("Vårdnadshavarens personnummer").is_visible()
    page.get_by_label("Barnets personnummer eller samordningsnummer").fill(child)
    page.get_by_label("Ta bort tillgång", exact=True).check()
    page.get_by_label("Barnet självt").check()
    page.get_by_role("button", name="Skicka beställningen").dblclick()
    page.wait_for_url(re.compile(r".*/kvitto.*"))
    assert page.get_by_role("heading", level=1).inner_text() == "Beställningen är skickad"
    page.screenshot(path=str(SHOTS / "receipt-no-javascript.png"), full_page=True)
    assert orders_for(child.replace("-", "")) == 1
    # axe needs JavaScript, so the same page is checked in a browser that has it.
    checker = Visitor(v.context.browser, v.base)
    checker.context.add_cookies(v.context.cookies())
    checker.goto(page.url.replace(v.base, ""))
    checker.check("receipt-no-javascript")
    checker.close()


# --- my orders and the order page ---------------------------------------------------------------------

def test_my_orders_and_the_order_page(visit: Any, live_app: str) -> None:
    with client(live_app, CLINICIAN) as api:
        r = api.post("/api/orders", json={
            "order_type": "seal_or_lock", "initiative": "care", "actions": ["seal_journal"],
            "patient_personal_number": PATIENT, "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar",
            "reason": "<script>alert(1)</script> hot"})
        assert r.status_code == 201, r.text
        ref = r.json()["reference"]
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    v.goto("/bestallningar")
    v.check("my-orders")
    v.page.get_by_role("link", name=ref).click()
    v.page.wait_for_url(f"**/bestallningar/{ref}")
    main = v.page.locator("main").inner_text()
    assert "19121212-****" in main and "<script>alert(1)</script> hot" in main  # shown as text, not run
    assert v.page.get_by_role("link", name="Skriv ut ifylld pappersblankett (PDF)").count() == 1
    assert v.page.get_by_role("link", name="Skriv ut tom pappersblankett (PDF)").count() == 1
    v.check("order")
    v.page.get_by_role("button", name="Återkalla beställningen").click()
    v.page.wait_for_url(re.compile(r".*aterkallad=1"))
    assert "Återkallad" in v.page.locator("main").inner_text()
    v.check("order-cancelled")


# --- queues -------------------------------------------------------------------------------------------

def _submit(live_app: str, **extra: Any) -> str:
    with client(live_app, CLINICIAN) as api:
        r = api.post("/api/orders", json={"order_type": "seal_or_lock", "initiative": "care",
                                          "actions": ["seal_journal"], "patient_personal_number": pnr(),
                                          "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar",
                                          "reason": "Hot mot patienten", **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["reference"])


def _wait(live_app: str, ref: str, *statuses: str) -> None:
    with client(live_app, CLINICIAN) as api:
        wait_status(api, ref, *statuses)


def test_assessment_and_approval_queues(visit: Any, live_app: str) -> None:
    ref = _submit(live_app)
    _wait(live_app, ref, "awaiting_assessment")
    v = visit(staff("assessor"), "Menprövaren (Region Kalmar län)")
    v.goto("/ko/menprovning")
    item = v.page.locator(f"section[id='{ref}']")
    assert "Hot mot patienten" in item.inner_text()
    v.check("queue-assessment")
    item.get_by_role("button", name=f"Registrera menprövning för {ref}").click()
    v.page.locator(".error-summary").wait_for()
    v.check("queue-assessment-errors")
    item = v.page.locator(f"section[id='{ref}']")
    item.get_by_label("Ja, risk för men").check()
    item.get_by_label("Begränsa åtkomsten").check()
    item.get_by_label("Motivering").fill("Risk för men för patienten")
    item.get_by_role("button", name=f"Registrera menprövning för {ref}").click()
    v.page.wait_for_url(re.compile(r".*/ko/menprovning\?klar=.*"))
    assert f"Beslutet för {ref} är registrerat." in v.page.locator(".notice").inner_text()
    _wait(live_app, ref, "awaiting_approval")

    head = visit(staff("head"), "Verksamhetschefen (Region Kalmar län)")
    head.goto("/ko/godkannande")
    head.check("queue-approval")
    item = head.page.locator(f"section[id='{ref}']")
    item.get_by_label("Godkänn").check()
    item.get_by_role("button", name=f"Registrera beslut för {ref}").click()
    head.page.wait_for_url(re.compile(r".*/ko/godkannande\?klar=.*"))
    _wait(live_app, ref, "executing", "completed")


def test_callback_and_execution_queues(visit: Any, live_app: str) -> None:
    ref = _submit(live_app, urgent=True)
    _wait(live_app, ref, "awaiting_callback")
    v = visit(staff("oncall"), "Beredskapen (Region Kalmar län)")
    v.goto("/ko/aterringning")
    v.check("queue-callback")
    item = v.page.locator(f"section[id='{ref}']")
    item.get_by_label("Anteckning från samtalet (valfritt)").fill("Ringde upp beställaren")
    item.get_by_role("button", name=f"Registrera återuppringning för {ref}").click()
    v.page.wait_for_url(re.compile(r".*/ko/aterringning\?klar=.*"))
    _wait(live_app, ref, "awaiting_assessment")

    admin = visit(staff("accountadmin"), "Kontoadministratören (Region Kalmar län)")
    admin.goto("/ko/verkstallande")
    admin.check("queue-execution")


def test_on_call_makes_an_order_urgent_from_its_page_and_watches_the_countdown(visit: Any, live_app: str) -> None:
    ref = _submit(live_app)
    _wait(live_app, ref, "awaiting_assessment")
    v = visit(staff("oncall"), "Beredskapen (Region Kalmar län)")
    v.goto(f"/bestallningar/{ref}")
    v.page.get_by_role("button", name="Gör beställningen brådskande").click()
    v.page.wait_for_url(re.compile(r".*bradskande=1"))
    timer = v.page.get_by_role("timer")
    first = timer.inner_text()
    assert re.fullmatch(r"(30:00|29:[0-5]\d) min kvar", first), first  # app.js has taken over from the server text
    v.page.wait_for_function("t => document.querySelector('[role=timer]').textContent !== t", arg=first, timeout=5000)
    v.check("order-urgent-countdown")
    v.page.get_by_label("Anteckning från samtalet (valfritt)").fill("Ringde upp beställaren")
    v.page.get_by_role("button", name="Registrera återuppringning").click()
    v.page.wait_for_url(re.compile(r".*uppringd=1"))
    assert "i tid" in v.page.locator("main").inner_text()
    assert v.page.get_by_role("timer").count() == 0


def test_error_pages(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    assert v.goto("/ko/menprovning").status == 403
    v.check("error-403")
    assert v.goto("/bestallningar/RO-2026-999999").status == 404
    v.check("error-404")
