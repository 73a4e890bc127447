"""Issue 14's administrator search: `GET /api/admin/orders?q=&region=&status=&urgent=&overdue=` (q matches a
reference, never a personal number), the search page the overview's counts link to, and the statistics page
in Chromium (axe 0 violations, screenshots in tests/artifacts/pages/).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tasks.adapters import Adapters

pytest.register_assert_rewrite("tests.webapp")
from tests import test_pages as _pages  # noqa: E402
from tests.test_pages import PNR_SHAPE, Visitor  # noqa: E402
from tests.webapp import stored_order  # noqa: E402

pytest_plugins = ["tests.webapp"]
browser, visit = _pages.browser, _pages.visit  # test_pages' fixtures: one Chromium, a Visitor per person

ADMIN = "DEMO-ADMIN"
REGION, UNIT = "ostergotland", "DEMO-OSTERGOTLAND-UNIT"


def _order(ad: Adapters, status: str, **fields: Any) -> str:
    return stored_order(ad, status, unit=UNIT, region=REGION, submitted_by="DEMO-OSTERGOTLAND-CLINICIAN", **fields)


def test_search_by_reference_and_filters(ad: Adapters, api: Any) -> None:
    late = _order(ad, "awaiting_approval", urgent=True, due_at=datetime.now(UTC) - timedelta(hours=3))
    normal = _order(ad, "awaiting_assessment")
    c = api(ADMIN)
    r = c.get("/api/admin/orders", params={"q": late})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1 and [o["reference"] for o in r.json()["orders"]] == [late]
    row = r.json()["orders"][0]
    assert row["urgent"] is True and row["overdue"] is True and row["region"] == REGION
    assert not PNR_SHAPE.search(r.text)  # no personal number in any row
    # A part of a reference, in lower case: both orders (and maybe others of the session) match.
    part = c.get("/api/admin/orders", params={"q": late[-4:].lower()}).json()
    assert late in [o["reference"] for o in part["orders"]]
    both = c.get("/api/admin/orders", params={"region": REGION, "q": late[:7]}).json()
    refs = [o["reference"] for o in both["orders"]]
    assert {late, normal} <= set(refs) and both["total"] >= 2
    urgent = c.get("/api/admin/orders", params={"region": REGION, "urgent": "true"}).json()
    assert late in [o["reference"] for o in urgent["orders"]] and normal not in [o["reference"] for o in urgent["orders"]]
    assert all(o["urgent"] for o in urgent["orders"]) and urgent["total"] == len(urgent["orders"])
    overdue = c.get("/api/admin/orders", params={"region": REGION, "overdue": "true", "status": "awaiting_approval"})
    assert late in [o["reference"] for o in overdue.json()["orders"]]
    assert all(o["overdue"] and o["status"] == "awaiting_approval" for o in overdue.json()["orders"])
    # Not a personal number, not anything else; wrong values are the contract's 422.
    for bad in ({"q": "19121212-1212"}, {"q": "<script>"}, {"region": "narnia"}, {"status": "done"},
                {"urgent": "maybe"}):
        r = c.get("/api/admin/orders", params=bad)
        assert r.status_code == 422 and r.json()["errors"], (bad, r.text)
    assert api("DEMO-OSTERGOTLAND-HEAD").get("/api/admin/orders").status_code == 403


def test_the_search_page_and_the_overview_s_links(visit: Any, ad: Adapters) -> None:
    late = _order(ad, "awaiting_approval", due_at=datetime.now(UTC) - timedelta(hours=5))
    v: Visitor = visit(ADMIN, "Administratören")
    v.goto(f"/admin?region={REGION}")
    link = v.page.locator("a[href*='/admin/bestallningar?status=awaiting_approval&region=ostergotland']").first
    link.click()
    v.page.wait_for_url(re.compile(r".*/admin/bestallningar\?status=awaiting_approval&region=ostergotland"))
    assert v.page.locator(f"tr a[href='/bestallningar/{late}']").count() == 1
    v.check("q14-admin-search-list")
    v.page.get_by_label("Referens").fill(late)
    v.page.get_by_role("button", name="Sök").click()
    v.page.wait_for_url(f"**/bestallningar/{late}")  # a whole reference opens the order
    assert v.page.get_by_role("link", name=re.compile("Beställningens körning i Prefect")).count() == 1
    v.goto("/admin/bestallningar?q=19121212-1212")
    assert "loggutdraget" in v.page.locator("main").inner_text()


def test_the_statistics_page(visit: Any, ad: Adapters) -> None:
    """The known set of tests/test_statistics.py, in Region Stockholm in November 2026 (no other test's)."""
    from dataclasses import replace

    from tests.test_statistics import KNOWN, store
    for r in KNOWN:
        store(ad, replace(r, region="stockholm"), "RO-2026-8")
    v: Visitor = visit(ADMIN, "Administratören")
    v.goto("/admin/statistik?region=stockholm&from=2026-11-01&to=2026-11-30")
    main = v.page.locator("main").inner_text()
    assert "75 %" in main and "5 (2 brådskande)" in main
    assert v.page.locator("svg[role=img]").count() == 4
    for i in range(4):
        svg = v.page.locator("svg[role=img]").nth(i)
        assert svg.locator("title").count() == 1 and svg.locator("desc").count() == 1
    assert v.page.locator("table.chart-table").count() == 4
    v.check("q14-admin-statistics")
    v.page.get_by_label("Region", exact=True).select_option(REGION)
    v.page.get_by_role("button", name="Visa").click()
    v.page.wait_for_url(re.compile(r".*/admin/statistik\?region=ostergotland.*"))
    v.check("q14-admin-statistics-region")
    href = v.page.get_by_role("link", name="Exportera siffrorna som CSV").get_attribute("href") or ""
    assert href.startswith("/api/admin/statistics.csv?region=ostergotland")


# --- the Prefect dashboard: automations say what they do, an order's card links back -----------------------

def test_every_shipped_automation_says_what_it_does() -> None:
    from uuid import uuid4

    from tasks.adapters.automations import all_specs
    for block in (None, uuid4()):
        specs = all_specs(block)
        assert len(specs) == 7
        for spec in specs:
            assert "Åtgärd:" in spec.description and len(spec.description) > 80, spec.name


def test_an_order_s_card_links_back_to_its_page(ad: Adapters) -> None:
    from tasks.adapters.timeline import markdown
    ref = _order(ad, "awaiting_assessment")
    text, run_id = markdown(ad.db, ref, "https://restriktioner.region.example/")
    assert f"[Öppna beställningen i appen](https://restriktioner.region.example/bestallningar/{ref})" in text
    assert run_id and not PNR_SHAPE.search(text)
    assert "Öppna beställningen" not in markdown(ad.db, ref)[0]  # no address configured: no link
