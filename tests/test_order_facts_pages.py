"""The changed order form in a real browser (Chromium + axe, as tests/test_pages.py): the callback number
for urgent orders, field-specific Swedish errors with the same label in the summary, the reason's character
counter, the duplicate warning with its confirmation, going back and sending again, and the filled paper form
opening in a tab of its own. Screenshots: tests/artifacts/pages/order-facts-*.png."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from models.tables import Order
from tasks.adapters import Adapters
from tests.test_pages import Visitor, browser, visit  # noqa: F401, F811  (fixtures)
from tests.webapp import born_years_ago, pnr, staff

pytest_plugins = ["tests.webapp"]
pytestmark = [pytest.mark.browser]

CLINICIAN = staff("clinician")
NAME = "Klinikern (Region Kalmar län)"


def orders_of(ad: Adapters, patient: str) -> int:
    with ad.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Order)
                            .where(Order.patient_pnr == patient.replace("-", ""))) or 0)


def fill(page: Any, patient: str) -> None:
    page.get_by_label("Patientens personnummer eller samordningsnummer").fill(patient)
    page.get_by_label("Vårdens initiativ").check()
    page.get_by_label("Försegla 1177 journal").check()
    page.get_by_label("Skäl till beställningen").fill("Hot mot patienten")


def test_urgent_order_asks_for_the_callback_number_with_errors_said_for_each_field(visit: Any) -> None:  # noqa: F811
    v: Visitor = visit(CLINICIAN, NAME)
    page = v.page
    v.goto("/bestall/seal_or_lock")
    phone = page.get_by_label("Ditt telefonnummer för återuppringning")
    expect(phone).to_be_hidden()  # asked only for an urgent order (shown without JavaScript)
    assert page.get_by_label("Patientens personnummer eller samordningsnummer").get_attribute("inputmode") == "numeric"
    # Only the clinician's own region's care units.
    regions = set(page.locator("#care_unit_hsa_id option[data-region]").evaluate_all(
        "els => els.map(e => e.dataset.region)"))
    assert regions == {"kalmar"}
    page.get_by_label("Beställningen är brådskande").check()
    expect(phone).to_be_visible()
    assert phone.get_attribute("type") == "tel" and phone.get_attribute("autocomplete") == "tel"
    # The reason's counter counts as you type.
    page.get_by_label("Skäl till beställningen").fill("Hot")
    expect(page.locator("#reason-count")).to_have_text("Du har 1997 tecken kvar av 2000.")
    expect(page.locator("#reason-count-live")).to_have_text("Du har 1997 tecken kvar av 2000.", timeout=5000)
    v.check("order-facts-form-urgent")

    page.get_by_role("button", name="Skicka beställningen").click()
    summary = page.locator(".error-summary")
    summary.wait_for()
    text = summary.inner_text()
    assert "Vems initiativ är beställningen? Välj vems initiativ beställningen är." in text
    assert "Ditt telefonnummer för återuppringning: Ange ditt telefonnummer: det krävs" in text
    assert "Fältet måste fyllas i." not in page.content()
    # The same words beside the field: the legend and its message.
    group = page.locator("fieldset#initiative")
    assert group.locator("legend").inner_text() == "Vems initiativ är beställningen?"
    assert "Välj vems initiativ beställningen är." in group.locator(".field-error").inner_text()
    expect(phone).to_be_visible()  # a field with an error is never hidden
    v.check("order-facts-form-errors")

    fill(page, pnr(born_years_ago(52, extra_days=211)))
    phone.fill("070-123 45 67")
    page.get_by_role("button", name="Skicka beställningen").click()
    page.wait_for_url(re.compile(r".*/bestallningar/RO-\d{4}-\d+/kvitto.*"))
    assert "Beredskapen ringer dig på 070-123 45 67." in page.locator(".urgent-box").inner_text()
    v.check("order-facts-receipt-urgent")


def ordered_once(v: Visitor, age: int) -> tuple[str, str]:
    """A seal ordered through the form for a new patient: (the patient's number, the order's reference)."""
    patient = pnr(born_years_ago(age, extra_days=211))
    v.goto("/bestall/seal_or_lock")
    fill(v.page, patient)
    v.page.get_by_role("button", name="Skicka beställningen").click()
    v.page.wait_for_url(re.compile(r".*/kvitto.*"))
    return patient, v.page.locator(".reference").inner_text()


def test_a_duplicate_is_confirmed_before_it_is_sent_and_back_then_send_makes_no_second_order(
        visit: Any, ad: Adapters) -> None:  # noqa: F811
    v: Visitor = visit(CLINICIAN, NAME)
    page = v.page
    patient, first = ordered_once(v, 53)
    assert orders_of(ad, patient) == 1

    # Back to the form and send it again: no second order without the clinician's say-so.
    page.go_back()
    page.wait_for_url(re.compile(r".*/bestall/seal_or_lock$"))
    if not page.get_by_label("Patientens personnummer eller samordningsnummer").input_value():
        fill(page, patient)  # the browser did not keep the typed values: type them again, as a person would
    page.get_by_role("button", name="Skicka beställningen").click()
    page.wait_for_load_state()
    assert orders_of(ad, patient) == 1
    if "/kvitto" in page.url:  # the same form token: the first order's receipt again
        assert page.locator(".reference").inner_text() == first
        v.goto("/bestall/seal_or_lock")
        fill(page, patient)
        page.get_by_role("button", name="Skicka beställningen").click()
    # A new form for the same patient and action: the warning names the open order and asks to confirm.
    confirm = page.get_by_label("Jag har kontrollerat: det är en ny beställning, skicka den ändå")
    confirm.wait_for()
    assert first in page.locator("#live-warnings").inner_text()
    assert orders_of(ad, patient) == 1
    v.check("order-facts-form-duplicate-confirm")
    page.get_by_role("button", name="Skicka beställningen").click()  # without ticking the box: held again
    page.locator(".error-summary").wait_for()
    assert "Bekräfta att det är en ny beställning" in page.locator(".error-summary").inner_text()
    assert orders_of(ad, patient) == 1
    v.check("order-facts-form-duplicate-unticked")
    confirm.check()
    page.get_by_role("button", name="Skicka beställningen").click()
    page.wait_for_url(re.compile(r".*/kvitto.*"))
    assert page.locator(".reference").inner_text() != first
    assert orders_of(ad, patient) == 2


def test_live_validation_shows_the_duplicate_while_typing_and_the_paper_form_opens_in_a_new_tab(
        visit: Any, ad: Adapters) -> None:  # noqa: F811
    v: Visitor = visit(CLINICIAN, NAME)
    page = v.page
    patient, first = ordered_once(v, 54)
    v.goto("/bestall/seal_or_lock")
    fill(page, patient)
    page.get_by_label("Låsa inloggning till 1177 e-tjänster").check()  # a change: live validation runs
    expect(page.locator("#live-warnings")).to_contain_text(first)
    # The filled paper form: a new tab, the typed form stays as it was.
    print_button = page.get_by_role("button", name="Skriv ut ifylld pappersblankett")
    assert print_button.get_attribute("formtarget") == "_blank"
    with v.context.expect_page() as opened:
        print_button.click()
    opened.value.close()
    assert page.url.endswith("/bestall/seal_or_lock")
    assert page.get_by_label("Patientens personnummer eller samordningsnummer").input_value() == patient
    assert page.get_by_label("Skäl till beställningen").input_value() == "Hot mot patienten"
    assert orders_of(ad, patient) == 1
