"""The pages in a real browser (Debian's /usr/bin/chromium via Playwright): log in, order each type, see
the receipt, decide in the queues. axe-core checks every page against WCAG 2.0/2.1 A and AA, and a
full-page screenshot of each lands in tests/artifacts/pages/<name>.png.

The app runs on uvicorn with the in-process engine (`live_app`): an order's run goes as far as it can within
the request that starts or resumes it, so a page shows the order's next stage as soon as the request returns.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from models.tables import Decision, Order, RegistryPerson, Staff
from tasks.adapters import Adapters
from tasks.adapters.settings import Settings

pytest.register_assert_rewrite("tests.webapp")  # imported here and loaded as a plugin: rewrite its asserts
from tests.webapp import PATIENT, born_years_ago, client, pnr, staff, stored_order, wait_status  # noqa: E402

pytest_plugins = ["tests.webapp"]
pytestmark = [pytest.mark.browser]

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
        # The embedded demo (RO_DEMO=true, as the tests run) says so on every page, visibly.
        demo = page.locator(".demo-banner")
        assert demo.count() == 1 and demo.is_visible() and demo.inner_text().startswith("Demo"), name
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


def orders_for(ad: Adapters, pnr12: str) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Order).where(Order.patient_pnr == pnr12)) or 0)


def patient_sealed_on_own_request(ad: Adapters, p: str) -> None:
    with ad.db.session() as s:
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
    page.get_by_label("Ditt telefonnummer för återuppringning").fill("070-123 45 67")
    page.get_by_role("button", name="Skicka beställningen").click()
    _receipt(v, "seal_or_lock")
    urgent = page.locator(".urgent-box").inner_text()
    assert "Ring supporten nu" in urgent and "0480-840 38, knappval 2" in urgent and "30 minuter" in urgent
    assert page.locator(".urgent-box a[href^='tel:+46']").count() == 1


def test_restore_access_shows_the_identity_check_only_when_it_applies(visit: Any, ad: Adapters) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    _errors_then_fix(v, "restore_access")
    page = v.page
    patient = pnr()
    patient_sealed_on_own_request(ad, patient)
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


def test_without_javascript_every_field_shows_and_a_double_click_makes_one_order(visit: Any, ad: Adapters) -> None:
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
    assert orders_for(ad, child.replace("-", "")) == 1
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
    v.page.get_by_role("link", name=ref, exact=True).click()
    v.page.wait_for_url(f"**/bestallningar/{ref}")
    main = v.page.locator("main").inner_text()
    assert "19121212-****" in main and "<script>alert(1)</script> hot" in main  # shown as text, not run
    assert v.page.get_by_role("link", name="Skriv ut ifylld pappersblankett (PDF)").count() == 1
    assert v.page.get_by_role("link", name="Skriv ut tom pappersblankett (PDF)").count() == 1
    v.check("order")
    v.page.get_by_role("link", name="Återkalla beställningen…").click()  # asks first (issue 14)
    v.page.get_by_role("button", name="Ja, återkalla beställningen").click()
    v.page.wait_for_url(re.compile(r".*aterkallad=1"))
    assert "Återkallad" in v.page.locator("main").inner_text()
    v.check("order-cancelled")


# --- queues -------------------------------------------------------------------------------------------

def _submit(live_app: str, **extra: Any) -> str:
    with client(live_app, CLINICIAN) as api:
        r = api.post("/api/orders", json={"order_type": "seal_or_lock", "initiative": "care",
                                          "actions": ["seal_journal"], "patient_personal_number": pnr(),
                                          "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar",
                                          "reason": "Hot mot patienten",
                                          **({"callback_phone": "070-123 45 67"} if extra.get("urgent") else {}),
                                          **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["reference"])


def _wait(live_app: str, ref: str, *statuses: str, reader: str = "DEMO-ADMIN") -> None:
    with client(live_app, reader) as api:
        wait_status(api, ref, *statuses)


def test_callback_and_execution_queues(visit: Any, live_app: str) -> None:
    ref = _submit(live_app, urgent=True)
    _wait(live_app, ref, "awaiting_callback")
    v = visit(staff("oncall"), "Beredskapen (Region Kalmar län)")
    v.goto("/ko/aterringning")
    v.check("queue-callback")
    v.page.locator(f"tr[id='{ref}']").get_by_role("link", name=ref, exact=True).click()  # decided on the order page
    v.page.get_by_label("Anteckning från samtalet (valfritt)").fill("Ringde upp beställaren")
    v.page.get_by_role("button", name="Registrera återuppringning").click()
    v.page.wait_for_url(re.compile(r".*uppringd=1"))
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
    assert re.fullmatch(r"(30 min 0|29 min [0-5]?\d) s kvar", first), first  # app.js has taken over from the server text
    v.page.wait_for_function("t => document.querySelector('[role=timer]').textContent !== t", arg=first, timeout=5000)
    v.check("order-urgent-countdown")
    v.page.get_by_label("Anteckning från samtalet (valfritt)").fill("Ringde upp beställaren")
    v.page.get_by_role("button", name="Registrera återuppringning").click()
    v.page.wait_for_url(re.compile(r".*uppringd=1"))
    assert "i tid" in v.page.locator("main").inner_text()
    assert v.page.get_by_role("timer").count() == 0
    v.check("order-callback-met")


def test_error_pages(visit: Any) -> None:
    v = visit(CLINICIAN, "Klinikern (Region Kalmar län)")
    assert v.goto("/ko/menprovning").status == 403
    v.check("error-403")
    assert v.goto("/bestallningar/RO-2026-999999").status == 404
    v.check("error-404")


# --- every other page: start for others, conflict, warnings, ended orders, admin, reviews, errors ---------

NAMES = {"assessor": "Menprövaren (Region Kalmar län)", "head": "Verksamhetschefen (Region Kalmar län)",
         "support": "Supporten (Region Kalmar län)", "accountadmin": "Kontoadministratören (Region Kalmar län)",
         "oncall": "Beredskapen (Region Kalmar län)", "clinician": "Klinikern (Region Kalmar län)"}
NEW_CLINICIAN = "TEST-KALMAR-NEWCLINICIAN"


def _as(visit: Any, role: str) -> Visitor:
    v: Visitor = visit(staff(role), NAMES[role])
    return v


def _fill_seal_or_lock(page: Any, patient: str, *, actions: tuple[str, ...] = ("Försegla 1177 journal",),
                       reason: str = "Hot mot patienten") -> None:
    page.get_by_label("Patientens personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Vårdens initiativ").check()
    for a in actions:
        page.get_by_label(a).check()
    page.get_by_label("Skäl till beställningen").fill(reason)


def test_start_page_for_someone_who_does_not_order(visit: Any) -> None:
    v = _as(visit, "assessor")
    assert v.page.get_by_role("link", name="Försegling och/eller låsning", exact=True).count() == 0
    assert v.page.get_by_role("link", name="Menprövning", exact=True).count() >= 1
    v.check("start-non-clinician")


def test_a_new_clinician_has_no_orders_yet(visit: Any, ad: Adapters) -> None:
    with ad.db.session() as s:
        if s.get(Staff, NEW_CLINICIAN) is None:
            s.add(Staff(hsa_id=NEW_CLINICIAN, name="Nya klinikern", email="new@kalmar.invalid", roles=["clinician"],
                        unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar", active=True))
    v = visit(NEW_CLINICIAN, "Nya klinikern")
    v.goto("/bestallningar")
    assert "Du har inte gjort några beställningar ännu" in v.page.locator("main").inner_text()
    v.check("my-orders-empty")


def test_warnings_on_the_form_and_the_receipt_and_an_idempotency_conflict(visit: Any) -> None:
    v = visit(CLINICIAN, NAMES["clinician"])
    page = v.page
    v.goto("/bestall/seal_or_lock")
    page.get_by_label("Låsa inloggning till 1177 e-tjänster").check()
    page.get_by_label("Patienten har skyddade personuppgifter").check()
    page.get_by_role("button", name="Skicka beställningen").click()
    page.locator(".error-summary").wait_for()
    warnings = page.locator("#live-warnings .warnings").inner_text()  # the server's, beside the errors
    assert "direktlänk" in warnings and "telefon" in warnings
    v.check("form-errors-and-warnings")
    key = page.locator("input[name=idempotency_key]").input_value()
    _fill_seal_or_lock(page, pnr(), actions=())
    page.get_by_role("button", name="Skicka beställningen").click()
    page.wait_for_url(re.compile(r".*/kvitto\?varningar=.*"))
    assert "direktlänk" in page.locator(".warnings").inner_text()
    v.check("receipt-warnings")
    # The same form sent again with other values (a stale tab, a browser's resend): 409, and a fresh token.
    v.goto("/bestall/seal_or_lock")
    page.locator("input[name=idempotency_key]").evaluate("(el, key) => { el.value = key; }", key)
    _fill_seal_or_lock(page, pnr())
    page.get_by_role("button", name="Skicka beställningen").click()
    page.locator(".error-summary").wait_for()
    assert "redan skickats en gång" in page.locator(".error-summary").inner_text()
    assert page.locator("input[name=idempotency_key]").input_value() != key
    v.check("form-idempotency-conflict")


def test_order_pages_as_the_head_and_support_and_a_409(visit: Any, live_app: str) -> None:
    ref = _submit(live_app)
    for role in ("head", "support"):
        v = _as(visit, role)
        v.goto(f"/bestallningar/{ref}")
        main = v.page.locator("main").inner_text()
        assert "-****" in main and not PNR_SHAPE.search(main)  # masked, never the whole number
        v.check(f"order-as-{role}")
    # The submitter's page still offers to cancel; the order is cancelled elsewhere meanwhile.
    v = visit(CLINICIAN, NAMES["clinician"])
    v.goto(f"/bestallningar/{ref}")
    v.page.get_by_role("link", name="Återkalla beställningen…").click()
    with client(live_app, CLINICIAN) as api:
        assert api.post(f"/api/orders/{ref}/cancel", json={"reason": "Dubblett"}).status_code == 200
    v.page.get_by_role("button", name="Ja, återkalla beställningen").click()
    v.page.wait_for_load_state()
    assert v.page.get_by_role("heading", level=1).inner_text() == "Kan inte göras nu"
    v.check("error-409")


def test_a_request_too_large_for_the_app(visit: Any) -> None:
    v = visit(CLINICIAN, NAMES["clinician"])
    v.goto("/bestall/seal_or_lock")
    v.page.get_by_label("Skäl till beställningen").fill("å" * 40_000)  # 80 kB of UTF-8, over the 64 KiB limit
    with v.page.expect_response(lambda r: r.request.method == "POST") as answer:
        v.page.get_by_role("button", name="Skicka beställningen").click()
    assert answer.value.status == 413
    v.page.wait_for_load_state()
    assert v.page.get_by_role("heading", level=1).inner_text() == "För stor förfrågan"
    v.check("error-413")


def _answer_of(app_ad: Adapters, path: str, user: str) -> tuple[int, dict[str, str], str]:
    """What the app answers with other adapters (behind SSO, or its database gone): a second app object in
    this process, built on them, asked once. The live app is idle meanwhile."""
    from starlette.testclient import TestClient

    from forms.app import create_app
    with TestClient(create_app(app_ad), client=("127.0.0.1", 40002), raise_server_exceptions=False) as c:
        r = c.get(path, headers={"X-Remote-User": user} if user else {})
    return r.status_code, dict(r.headers), r.text


def _show(v: Visitor, name: str, answer: tuple[int, dict[str, str], str]) -> None:
    """Show an answer the live app cannot give right now, at a same-origin address with its own headers
    (CSP included), so its styles load and axe sees it as a person would."""
    status, headers, html = answer
    path = f"/__tests__/{name}"
    keep = {k: val for k, val in headers.items() if k.lower() not in ("content-length", "set-cookie")}
    v.context.route(f"{v.base}{path}", lambda route: route.fulfill(status=status, headers=keep, body=html))
    assert v.goto(path).status == status


def test_error_pages_401_and_503(visit: Any, ad: Adapters, settings: Settings) -> None:
    from flows.bootstrap import in_process
    from tasks.adapters.database import Database
    behind_sso = settings.model_copy(update={"embedded_login": False, "session_secret": "s" * 48})
    sso = _answer_of(in_process(behind_sso, db=ad.db), "/bestallningar", "")
    assert sso[0] == 401 and "SITHS" in sso[2]
    unreachable = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    try:
        down = _answer_of(in_process(settings, db=unreachable), "/bestallningar", CLINICIAN)
    finally:
        unreachable.dispose()
    assert down[0] == 503 and down[1]["retry-after"] == "30"
    v = visit()
    _show(v, "error-401", sso)
    assert v.page.get_by_role("heading", level=1).inner_text() == "Inte inloggad"
    v.check("error-401")
    _show(v, "error-503", down)
    assert v.page.get_by_role("heading", level=1).inner_text() == "Tillfälligt otillgänglig"
    v.check("error-503")


def test_manual_execution_confirmed_in_the_queue(visit: Any, ad: Adapters) -> None:
    ref = stored_order(ad, "executing")
    v = _as(visit, "accountadmin")
    v.goto("/ko/verkstallande")
    item = v.page.locator(f"tr[id='{ref}']")
    assert "-****" in item.inner_text() and not PNR_SHAPE.search(item.inner_text())
    v.check("queue-execution-with-order")
    item.get_by_role("link", name=ref, exact=True).click()  # decided on the order page (issue 14)
    v.page.get_by_role("button", name=f"Bekräfta verkställande för {ref}").click()
    v.page.locator(".error-summary").wait_for()
    v.check("queue-execution-errors")
    v.page.get_by_label("Referens i 1177 administrationsverktyg").fill("ADM-4711")
    v.page.get_by_role("button", name=f"Bekräfta verkställande för {ref}").click()
    v.page.wait_for_url(re.compile(r".*/ko/verkstallande\?klar=.*"))
    assert f"Beslutet för {ref} är registrerat." in v.page.locator(".notice").inner_text()
    with ad.db.session() as s:
        d = s.scalar(select(Decision).join(Order).where(Order.reference == ref, Decision.stage == "execution"))
        assert d is not None and d.decided_by == staff("accountadmin") and d.detail == {"system_reference": "ADM-4711"}
    v.check("queue-execution-confirmed")


def test_head_of_department_reviews(visit: Any, ad: Adapters) -> None:
    now = datetime.now(UTC)
    ref = stored_order(ad, "completed", review_due_on=now - timedelta(days=1), review_after_days=365)
    v = _as(visit, "head")
    v.goto("/omprovningar")
    assert v.page.locator(f"section[id='review-{ref}']").count() == 1
    v.check("head-reviews")
    section = v.page.locator(f"section[id='review-{ref}']")
    section.get_by_role("button", name=f"Registrera omprövning för {ref}").click()
    v.page.locator(".error-summary").wait_for()
    v.check("head-reviews-errors")
    section = v.page.locator(f"section[id='review-{ref}']")
    section.get_by_label("Behåll begränsningen").check()
    section.get_by_role("button", name=f"Registrera omprövning för {ref}").click()
    v.page.wait_for_url(re.compile(r".*/omprovningar\?klar=.*"))
    assert ref in v.page.locator(".notice").inner_text()


def test_the_administrator_s_pages(visit: Any, ad: Adapters) -> None:
    stored_order(ad, "completed", review_due_on=datetime.now(UTC) - timedelta(days=2))  # a review due on its page
    v = visit("DEMO-ADMIN", "Administratören")
    for path, name in (("/admin", "admin-overview"), ("/admin/avvikelser", "admin-deviations"),
                       ("/admin/omprovningar", "admin-reviews"), ("/admin/logg", "admin-log")):
        assert v.goto(path).status == 200, path
        v.check(name)
    assert v.goto("/admin?region=narnia").status == 422
    v.check("admin-filter-error")
    v.goto("/admin/logg")
    v.page.get_by_label("Patientens personnummer eller samordningsnummer").fill("19121212-1213")
    v.page.get_by_role("button", name="Ta fram loggutdrag").click()
    v.page.locator(".error-summary").wait_for()
    v.check("admin-log-extract-error")
    v.page.get_by_label("Patientens personnummer eller samordningsnummer").fill(PATIENT)
    v.page.get_by_role("button", name="Ta fram loggutdrag").click()
    v.page.locator("#extract-title").wait_for()
    assert "19121212-****" in v.page.locator("#extract-title").inner_text()
    v.check("admin-log-extract")
    v.page.get_by_label("Period (antal dagar bakåt)").fill("0")
    v.page.get_by_role("button", name="Gör stickprov").click()
    v.page.locator(".error-summary").wait_for()
    v.check("admin-sample-check-error")
    v.page.get_by_label("Period (antal dagar bakåt)").fill("30")
    v.page.get_by_role("button", name="Gör stickprov").click()
    v.page.get_by_role("heading", name="Resultat av stickprovet").wait_for()
    v.check("admin-sample-check")


# --- a new clinician follows each order type to completion ----------------------------------------------

FIRST_DAY = "TEST-KALMAR-FIRSTDAY"


def _decide_in_queue(v: Visitor, slug: str, ref: str, fill: Any, button: str) -> None:
    """From the queue's row to the order page, where the decision form is (issue 14)."""
    v.goto(f"/ko/{slug}")
    v.page.locator(f"tr[id='{ref}']").get_by_role("link", name=ref, exact=True).click()
    item = v.page.locator("#decision")
    fill(item)
    item.get_by_role("button", name=f"{button} för {ref}").click()
    v.page.wait_for_url(re.compile(rf".*/ko/{slug}\?klar={ref}"))


def test_a_new_clinician_orders_each_type_and_follows_it_to_completion(visit: Any, live_app: str,
                                                                      ad: Adapters) -> None:
    with ad.db.session() as s:
        if s.get(Staff, FIRST_DAY) is None:
            s.add(Staff(hsa_id=FIRST_DAY, name="Första dagen", email="firstday@kalmar.invalid", roles=["clinician"],
                        unit_hsa_id="DEMO-KALMAR-UNIT", region="kalmar", active=True))
    clinician = visit(FIRST_DAY, "Första dagen")
    page = clinician.page
    refs: dict[str, str] = {}

    def send(order_type: str, fill: Any) -> None:
        clinician.goto(f"/bestall/{order_type}")
        fill()
        page.get_by_role("button", name="Skicka beställningen").click()
        page.wait_for_url(re.compile(r".*/kvitto.*"))
        refs[order_type] = page.locator(".reference").inner_text()

    send("seal_or_lock", lambda: _fill_seal_or_lock(page, pnr()))
    sealed = pnr()
    patient_sealed_on_own_request(ad, sealed)

    def restore() -> None:
        page.get_by_label("Patientens personnummer eller samordningsnummer").fill(sealed)
        page.get_by_label("Patientens önskemål").check()
        page.get_by_label("Bryta försegling av 1177 journal").check()
        page.get_by_label("Patientens identitet är kontrollerad vid personligt besök").check()
        page.get_by_label("Skäl till beställningen").fill("Patienten vill åter läsa sin journal")
    send("restore_access", restore)

    def block() -> None:
        page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(9)))
        page.get_by_label("Vårdnadshavarens personnummer (den vars direktåtkomst tas bort)").fill(pnr(born_years_ago(41)))
        page.get_by_label("Skäl till beställningen").fill("Orosanmälan")
    send("block_guardian", block)

    def minor() -> None:
        page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(14)))
        page.get_by_label("Ge tillgång", exact=True).check()
        page.get_by_label("Barnet självt").check()
        page.get_by_label("Skäl till beställningen").fill("Mognadsbedömning gjord")
    send("minor_access", minor)

    clinician.goto("/bestallningar")
    assert {a.inner_text() for a in page.locator("table a").all()} == set(refs.values())
    clinician.check("my-orders-first-day")

    assessed = [refs[t] for t in ("seal_or_lock", "block_guardian", "minor_access")]  # care: harm test
    for ref in assessed:
        _wait(live_app, ref, "awaiting_assessment")
    assessor = _as(visit, "assessor")
    assessor.goto("/ko/menprovning")
    assessor.check("queue-assessment")
    assessor.page.locator(f"tr[id='{assessed[0]}']").get_by_role("link", name=assessed[0], exact=True).click()
    assert "Hot mot patienten" in assessor.page.locator("main").inner_text()
    assessor.page.get_by_role("button", name=f"Registrera menprövning för {assessed[0]}").click()
    assessor.page.locator(".error-summary").wait_for()
    assessor.check("queue-assessment-errors")

    def assess(item: Any) -> None:
        item.get_by_label("Ja, risk för men").check()
        item.get_by_label("Begränsa åtkomsten").check()
        item.get_by_label("Motivering").fill("Risk för men för patienten")
    for ref in assessed:
        _decide_in_queue(assessor, "menprovning", ref, assess, "Registrera menprövning")
    assert refs["restore_access"] not in assessor.page.locator("main").inner_text()  # patient's own: none

    for ref in refs.values():
        _wait(live_app, ref, "awaiting_approval")
    head = _as(visit, "head")
    head.goto("/ko/godkannande")
    head.check("queue-approval")
    one = refs["seal_or_lock"]
    head.page.locator(f"tr[id='{one}']").get_by_role("link", name=one, exact=True).click()
    head.page.get_by_role("button", name=f"Registrera beslut för {one}").click()
    head.page.locator(".error-summary").wait_for()
    head.check("queue-approval-errors")
    for ref in refs.values():
        _decide_in_queue(head, "godkannande", ref, lambda item: item.get_by_label("Godkänn").check(),
                         "Registrera beslut")

    # Back as the clinician: each order page, reloaded as a person would, until it says it is done.
    for order_type, ref in refs.items():
        clinician.goto(f"/bestallningar/{ref}")
        status = page.locator(".summary-list div", has_text="Status").locator("dd")
        deadline = time.monotonic() + 90
        while status.inner_text() != "Klar":
            assert time.monotonic() < deadline, f"{ref} ({order_type}) is {status.inner_text()}"
            time.sleep(1)
            page.reload()
        timeline = page.locator(".timeline").inner_text()
        for step in ("Beställningen skickades in", "Godkänd", "Verkställd"):
            assert step in timeline, (order_type, timeline)
        assert ("Menprövning: begränsa" in timeline) == (ref in assessed), (order_type, timeline)
        assert page.get_by_role("link", name="Återkalla beställningen…").count() == 0
        clinician.check(f"order-completed-{order_type}")


# --- keyboard only --------------------------------------------------------------------------------------

ACTIVE = """() => { const e = document.activeElement;
  return {id: e.id, tag: e.tagName, type: e.type || "", cls: e.className || "", inForm: !!e.closest("#order-form")}; }"""
TAB_STOPS = """() => {
  const seen = new Set(); const out = [];
  for (const e of document.querySelectorAll("#order-form input, #order-form select, #order-form textarea, #order-form button")) {
    if (e.type === "hidden" || e.disabled || !e.getClientRects().length) continue;
    if (e.type === "radio") { if (seen.has(e.name)) continue; seen.add(e.name); }
    out.push(e.id || e.tagName + ":" + e.type);
  }
  return out; }"""


def test_keyboard_only_through_a_form_and_its_error_summary(visit: Any) -> None:
    v = visit(CLINICIAN, NAMES["clinician"])
    page = v.page
    v.goto("/bestall/seal_or_lock")
    page.keyboard.press("Tab")
    assert "skip-link" in page.evaluate(ACTIVE)["cls"]
    page.keyboard.press("Enter")
    assert page.evaluate(ACTIVE)["id"] == "main"
    expected = page.evaluate(TAB_STOPS)
    assert expected[-1] == "BUTTON:submit" and "patient_personal_number" in expected and "care_unit_hsa_id" in expected
    reached: list[str] = []
    for _ in range(80):
        page.keyboard.press("Tab")
        now = page.evaluate(ACTIVE)
        if now["inForm"]:
            reached.append(now["id"] or f"{now['tag']}:{now['type']}")
        if reached and reached[-1] == "BUTTON:submit":
            break
    assert reached == expected  # every field, in page order, then the submit button
    page.keyboard.press("Enter")  # send the empty form
    page.locator(".error-summary").wait_for()
    # Focus on the summary, so it is read first: app.js moves it there once the page has loaded (the
    # element exists a moment before that).
    page.wait_for_function("() => document.activeElement && document.activeElement.classList.contains('error-summary')",
                           timeout=10_000)
    assert "error-summary" in page.evaluate(ACTIVE)["cls"]
    links = page.locator(".error-summary a")
    assert links.count() >= 3
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.getAttribute('href')") == links.first.get_attribute("href")
    for i in range(links.count()):
        target = (links.nth(i).get_attribute("href") or "")[1:]
        links.nth(i).focus()
        page.keyboard.press("Enter")
        assert page.evaluate(ACTIVE)["id"] == target, target
        label = page.locator(f"label[for='{target}']")
        if label.count():
            assert label.is_visible()
    v.check("form-keyboard-errors")


# --- region settings on the pages: sourced values, unset ones, no promised callback ------------------------

UNSET = "Ej inställt – kontakta regionens 1177-förvaltning"


def _urgent_seal(v: Visitor) -> None:
    v.goto("/bestall/seal_or_lock")
    _fill_seal_or_lock(v.page, pnr())
    v.page.get_by_label("Beställningen är brådskande").check()
    v.page.get_by_label("Ditt telefonnummer för återuppringning").fill("070-123 45 67")
    v.page.get_by_role("button", name="Skicka beställningen").click()


def test_ostergotlands_receipt_gives_its_24_7_number_and_promises_no_callback(visit: Any) -> None:
    v = visit(staff("clinician", "ostergotland"), "Klinikern (Region Östergötland)")
    _urgent_seal(v)
    _receipt(v, "seal_or_lock-ostergotland")
    urgent = v.page.locator(".urgent-box").inner_text()
    assert "010-103 6000" in urgent and "Linjen svarar dygnet runt." in urgent
    assert "uppringd" not in urgent and "minuter" not in urgent and "meddelande" not in urgent
    assert v.page.locator(".urgent-box a[href='tel:+46101036000']").count() == 1


def test_a_region_whose_values_are_not_set_says_so_instead_of_a_number(visit: Any) -> None:
    v = visit(staff("clinician", "jonkoping"), "Klinikern (Region Jönköpings län)")
    _urgent_seal(v)
    _receipt(v, "seal_or_lock-unset-region")
    urgent = v.page.locator(".urgent-box").inner_text()
    assert f"{UNSET}" in urgent and f"Tid för uppringning: {UNSET}." in urgent
    assert v.page.locator(".urgent-box .phone").inner_text() == UNSET  # not a number
    assert v.page.locator(".urgent-box a[href^='tel:']").count() == 0


def test_a_protected_guardian_on_the_forms(visit: Any) -> None:
    v = visit(CLINICIAN, NAMES["clinician"])
    page = v.page
    v.goto("/bestall/minor_access")
    protected = page.get_by_label("Vårdnadshavaren har skyddade personuppgifter")
    page.get_by_label("Barnet självt").check()
    assert not protected.is_visible()  # only where a guardian is named
    page.get_by_label("Ge tillgång", exact=True).check()
    page.get_by_label("Vårdnadshavare", exact=True).check()
    page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(14)))
    page.get_by_label("Vårdnadshavarens personnummer").fill(pnr(born_years_ago(44)))
    page.get_by_label("Barnet har samtyckt till att vårdnadshavaren får tillgång").check()
    protected.check()
    page.get_by_label("Skäl till beställningen").fill("Särskilda skäl")
    page.get_by_role("button", name="Skicka beställningen").click()
    page.locator(".error-summary").wait_for()
    assert "barnet eller vårdnadshavaren har skyddade personuppgifter" in page.locator(".error-summary").inner_text()
    assert page.get_by_label("Vårdnadshavaren har skyddade personuppgifter").is_checked()  # kept
    v.check("form-minor_access-protected-guardian")

    v.goto("/bestall/block_guardian")
    page.get_by_label("Barnets personnummer eller samordningsnummer").fill(pnr(born_years_ago(9)))
    page.get_by_label("Vårdnadshavarens personnummer (den vars direktåtkomst tas bort)").fill(pnr(born_years_ago(40)))
    page.get_by_label("Vårdnadshavaren har skyddade personuppgifter").check()
    page.get_by_label("Skäl till beställningen").fill("Orosanmälan")
    page.get_by_role("button", name="Skicka beställningen").click()
    ref = _receipt(v, "block_guardian-protected-guardian")
    assert "Patienten eller vårdnadshavaren har skyddade personuppgifter" in page.locator(".warnings").inner_text()
    v.goto(f"/bestallningar/{ref}")
    assert "Skyddade personuppgifter – endast telefon" in page.locator(".summary-list").inner_text()


def test_outside_the_demo_no_page_says_demo(live_app: str, ad: Adapters) -> None:
    from fastapi.testclient import TestClient

    from flows.bootstrap import in_process
    from forms.app import create_app
    with client(live_app) as c:
        assert "demo-banner" in c.get("/login").text
    production = create_app(in_process(ad.settings.model_copy(update={"demo": False}), db=ad.db))
    with TestClient(production, client=("127.0.0.1", 5000)) as c:
        page = c.get("/login").text
    assert "demo-banner" not in page and "inte för verklig användning" not in page
