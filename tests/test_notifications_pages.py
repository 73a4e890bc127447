"""Issue 13 in a real browser: the start page's *Skickat till dig* and the order page's two deadlines, with
axe-core (WCAG 2.0/2.1 A and AA, 0 violations) and screenshots in tests/artifacts/pages/ (the machinery of
tests/test_pages.py: Debian's Chromium through Playwright, the app on uvicorn with the in-process engine).
"""

from __future__ import annotations

from typing import Any

import pytest

from tasks.adapters import Adapters

pytest.register_assert_rewrite("tests.webapp")
from tests.test_pages import Visitor, browser  # noqa: E402, F401  (the browser fixture)
from tests.webapp import client, pnr, staff  # noqa: E402

pytest_plugins = ["tests.webapp"]
pytestmark = [pytest.mark.browser]


def test_start_page_lists_what_was_sent_and_the_order_page_both_deadlines(browser: Any, live_app: str,  # noqa: F811
                                                                          ad: Adapters) -> None:
    body = {"order_type": "seal_or_lock", "initiative": "care", "patient_personal_number": pnr(),
            "care_unit_hsa_id": "DEMO-KALMAR-UNIT", "region": "kalmar", "reason": "Hot mot patienten",
            "actions": ["seal_journal", "lock_login"], "urgent": True, "callback_phone": "070-123 45 67"}
    with client(live_app, staff("clinician")) as c:
        r = c.post("/api/orders", json=body)
        assert r.status_code == 201, r.text
        ref = r.json()["reference"]
    with client(live_app, "DEMO-KALMAR-ONCALL") as c:
        assert c.post(f"/api/orders/{ref}/callback", json={"note": ""}).status_code == 202

    v = Visitor(browser, live_app)
    try:
        v.login(staff("assessor"), "Menprövaren (Region Kalmar län)")
        section = v.page.locator("section[aria-labelledby='sent-title']")
        assert section.count() == 1
        text = section.inner_text()
        assert "Skickat till dig" in text and ref in text and "menprövning väntar på dig" in text
        v.check("start-sent-to-you")
        v.goto(f"/bestallningar/{ref}")
        v.check("order-urgent-two-deadlines")
    finally:
        v.close()

    v = Visitor(browser, live_app)
    try:
        v.login("DEMO-KALMAR-ONCALL", "Beredskapen (Region Kalmar län)")
        v.goto(f"/bestallningar/{ref}")
        box = v.page.locator("section.callback-box").inner_text()
        assert "Återuppringning senast" in box and "Genomförd senast" in box
        v.check("order-callback-box-both-deadlines")
    finally:
        v.close()
