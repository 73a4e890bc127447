"""Issue 14's queues and order page: `GET /api/queues/{stage}` (the contract's order: urgent first, then by
deadline, then the oldest; the caller's own decisions; 403 for a role that never decides the stage), the
queue pages as compact rows with filters, the order page in each stage state with the decision on it, and
keyboard-only use of a queue, in Chromium with axe-core (0 violations; screenshots in tests/artifacts/pages/).

The app runs with the in-process engine (`live_app`); rows the routine would leave are stored directly
(`seeded`), an order that is decided through the page is submitted for real.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import Decision, Order
from tasks.adapters import Adapters

pytest.register_assert_rewrite("tests.webapp")
from tests import test_pages as _pages  # noqa: E402
from tests.test_pages import PNR_SHAPE, Visitor  # noqa: E402
from tests.webapp import body, client, staff, stored_order, wait_status  # noqa: E402

browser, visit = _pages.browser, _pages.visit  # test_pages' fixtures: one Chromium, a Visitor per person

pytest_plugins = ["tests.webapp"]

NOW = datetime.now(UTC)
REGION, UNIT = "jonkoping", "DEMO-JONKOPING-UNIT"  # a region the other page tests leave alone
NAMES = {"assessor": "Menprövaren", "head": "Verksamhetschefen", "oncall": "Beredskapen",
         "accountadmin": "Kontoadministratören", "clinician": "Klinikern"}
NOT_URGENT = {"required": False, "role": None, "rule": "not_urgent", "reason": "Inte brådskande: ingen återuppringning."}
URGENT = {"required": True, "role": "on_call", "rule": "urgent_callback",
          "reason": "Brådskande: beredskapen ringer upp inom 30 minuter."}
HARM = {"required": True, "role": "assessor", "rule": "care_initiative_harm_test",
        "reason": "Menprövning krävs: vårdens initiativ (OSL 25 kap.)."}
NO_HARM = {"required": False, "role": None, "rule": "patient_own_request",
           "reason": "Ingen menprövning: patienten begär själv ändringen av sin egen åtkomst."}
HEAD = {"required": True, "role": "head_of_department", "rule": "head_of_department_approves",
        "reason": "Verksamhetschefen för den beställande vårdenheten godkänner."}


def who(role: str) -> str:
    return staff(role, REGION)


def seeded(ad: Adapters, status: str, *, urgent: bool = False, due: timedelta = timedelta(days=1),
           age: timedelta = timedelta(hours=1), harm: dict[str, Any] = HARM,
           decisions: tuple[tuple[str, str, str, dict[str, Any], str], ...] = (), **fields: Any) -> str:
    """An order row as its run leaves it at `status`, with its plan and accepted decisions
    ((stage, decided_by, outcome, detail, text), oldest first)."""
    plan = {"callback": URGENT if urgent else NOT_URGENT, "harm_assessment": harm, "approval": HEAD}
    extra: dict[str, Any] = {"callback_due_at": NOW + due, "callback_at": None} if urgent else {}
    fields = {"submitted_by": who("clinician"), "callback_phone": "070-123 45 67", **extra, **fields}
    ref = stored_order(ad, status, unit=UNIT, region=REGION, urgent=urgent, due_at=NOW + due, created_at=NOW - age,
                       stage_plan=plan, **fields)
    with ad.db.session() as s:
        order = s.scalar(select(Order).where(Order.reference == ref))
        assert order is not None
        for i, (stage, by, outcome, detail, text) in enumerate(decisions):
            s.add(Decision(order_id=order.id, stage=stage, decided_by=by, outcome=outcome, detail=detail, text=text,
                           state="accepted", created_at=NOW - age + timedelta(minutes=10 * (i + 1))))
    return ref


ASSESSED = ("harm_assessment", staff("assessor", REGION), "restrict", {"harm_found": True, "review_after_days": 180},
            "Risk för allvarligt men för patienten")
CALLED = ("callback", staff("oncall", REGION), "done", {}, "Ringde beställaren, bekräftat hot")
APPROVED = ("approval", staff("head", REGION), "approve", {}, "Godkänt")


# --- the API ------------------------------------------------------------------------------------------

def mine(rows: list[dict[str, Any]], refs: list[str]) -> list[str]:
    return [r["reference"] for r in rows if r["reference"] in refs]


def test_api_queue_order_is_urgent_then_deadline_then_oldest(ad: Adapters, api: Any) -> None:
    n1 = seeded(ad, "executing", due=timedelta(hours=20), age=timedelta(days=1))
    n2 = seeded(ad, "executing", due=timedelta(hours=20), age=timedelta(days=2))  # same deadline, older
    n3 = seeded(ad, "executing", due=timedelta(hours=10))
    u1 = seeded(ad, "executing", urgent=True, due=timedelta(hours=30))  # urgent: first, however late its deadline
    u2 = seeded(ad, "executing", urgent=True, due=timedelta(hours=25))
    refs = [n1, n2, n3, u1, u2]
    r = api(who("accountadmin")).get("/api/queues/execution")
    assert r.status_code == 200, r.text
    rows = r.json()["orders"]
    assert mine(rows, refs) == [u2, u1, n3, n2, n1]
    # Urgent orders of every other test come first too: nothing urgent after a normal one.
    urgency = [row["urgent"] for row in rows]
    assert urgency == sorted(urgency, reverse=True)
    row = next(x for x in rows if x["reference"] == u2)
    assert row["order_type"] == "seal_or_lock" and row["actions"] == ["seal_journal"] and row["urgent"] is True
    assert row["care_unit_hsa_id"] == UNIT and row["care_unit"] and row["region"] == REGION
    assert re.fullmatch(r"\d{8}-\*{4}", row["patient"]) and not PNR_SHAPE.search(r.text)
    assert 25 * 3600 - 900 < row["seconds_left"] <= 25 * 3600 and row["deadline"].startswith(str(NOW.year))
    assert next(x for x in rows if x["reference"] == n1)["seconds_left"] is None  # a countdown only when urgent
    # The page lists the same rows in the same order.
    page = api(who("accountadmin")).get("/ko/verkstallande").text
    listed = re.findall(r'<tr class="queue-item[^"]*" id="(RO-\d{4}-\d+)"', page)
    assert [x for x in listed if x in refs] == [u2, u1, n3, n2, n1]


def test_api_queue_filters_by_unit_and_type_and_lists_only_own_decisions(ad: Adapters, api: Any) -> None:
    guardian = seeded(ad, "awaiting_assessment", order_type="block_guardian", actions=[])
    seal = seeded(ad, "awaiting_assessment")
    own = seeded(ad, "awaiting_assessment", submitted_by=who("assessor"))  # four eyes: not theirs to decide
    c = api(who("assessor"))
    by_type = c.get("/api/queues/harm_assessment", params={"type": "block_guardian"}).json()["orders"]
    assert guardian in mine(by_type, [guardian, seal]) and seal not in mine(by_type, [guardian, seal])
    assert {row["order_type"] for row in by_type} == {"block_guardian"}
    other_unit = c.get("/api/queues/harm_assessment", params={"unit": "DEMO-JONKOPING-OTHER"}).json()["orders"]
    assert other_unit == []
    in_unit = c.get("/api/queues/harm_assessment", params={"unit": UNIT.lower()}).json()["orders"]
    assert {guardian, seal} <= set(mine(in_unit, [guardian, seal]))
    assert own not in mine(in_unit, [own])
    page = c.get("/ko/menprovning").text
    assert f'id="{own}"' in page and "fyra ögon" in page  # on the page, with the reason
    assert c.get("/api/queues/harm_assessment", params={"type": "pizza"}).status_code == 422
    filtered = c.get("/ko/menprovning", params={"typ": "block_guardian", "enhet": UNIT}).text
    assert f'id="{guardian}"' in filtered and f'id="{seal}"' not in filtered


@pytest.mark.parametrize(("role", "allowed"), [
    ("clinician", set()), ("assessor", {"harm_assessment"}), ("head", {"approval"}), ("bakjour", {"approval"}),
    ("oncall", {"callback"}), ("support", {"callback"}), ("accountadmin", {"execution"})])
def test_api_queue_role_rule(api: Any, role: str, allowed: set[str]) -> None:
    c = api(who(role))
    for stage in ("callback", "harm_assessment", "approval", "execution"):
        r = c.get(f"/api/queues/{stage}")
        assert r.status_code == (200 if stage in allowed else 403), (role, stage, r.text)
        if r.status_code == 403:
            assert r.json()["errors"][0]["code"] == "wrong_role"
    assert c.get("/api/queues/pizza").status_code == 404


# --- the pages in a browser ---------------------------------------------------------------------------

def _as(visit: Any, role: str) -> Visitor:
    v: Visitor = visit(who(role), f"{NAMES[role]} (Region Jönköpings län)")
    return v


QUEUES = [("aterringning", "callback", "oncall", "awaiting_callback", ()),
          ("menprovning", "harm_assessment", "assessor", "awaiting_assessment", (CALLED,)),
          ("godkannande", "approval", "head", "awaiting_approval", (ASSESSED,)),
          ("verkstallande", "execution", "accountadmin", "executing", (ASSESSED, APPROVED))]


@pytest.mark.parametrize(("slug", "stage", "role", "status", "decisions"), QUEUES)
def test_each_queue_with_an_urgent_and_a_normal_order(visit: Any, ad: Adapters, slug: str, stage: str, role: str,
                                                      status: str, decisions: Any) -> None:
    normal = seeded(ad, status, due=timedelta(hours=2), urgent=stage == "callback",
                    decisions=decisions)  # the callback queue holds urgent orders only
    urgent = seeded(ad, status, urgent=True, due=timedelta(minutes=29, seconds=40),
                    decisions=(CALLED, *decisions[1:]) if stage != "callback" else ())
    guardian = seeded(ad, status, order_type="block_guardian", actions=[], guardian_pnr="198001019802",
                      due=timedelta(hours=3), urgent=stage == "callback", decisions=decisions)
    v = _as(visit, role)
    v.goto(f"/ko/{slug}")
    rows = v.page.locator("tr.queue-item")
    ids = [rows.nth(i).get_attribute("id") for i in range(rows.count())]
    assert ids.index(urgent) < ids.index(normal)
    row = v.page.locator(f"tr[id='{urgent}']")
    text = row.inner_text()
    assert "Brådskande" in text and re.search(r"\d+ min \d+ s kvar", text), text
    assert re.search(r"\d{8}-\*{4}", text) and not PNR_SHAPE.search(text)
    if stage == "callback":
        assert row.get_by_role("link", name=re.compile("070-123 45 67")).get_attribute("href") == "tel:+46701234567"
    if stage in ("approval", "execution"):
        normal_row = v.page.locator(f"tr[id='{normal}']").inner_text()
        assert "Menprövning: begränsa" in normal_row and "Risk för allvarligt men" in normal_row
        assert "Vårdnadshavare: 19800101-****" in v.page.locator(f"tr[id='{guardian}']").inner_text()
    v.check(f"q14-queue-{stage}")
    row.get_by_role("link", name=urgent, exact=True).click()
    v.page.wait_for_url(f"**/bestallningar/{urgent}")


def test_the_order_page_in_every_stage_state(visit: Any, ad: Adapters) -> None:
    # Waiting for its assessment after an urgent callback: done, waiting, pending; the assessor decides here.
    waiting = seeded(ad, "awaiting_assessment", urgent=True, decisions=(CALLED,), callback_at=NOW - timedelta(minutes=5))
    assessor = _as(visit, "assessor")
    assessor.goto(f"/bestallningar/{waiting}")
    main = assessor.page.locator("main").inner_text()
    assert "Återuppringning: klar" in main and "Menprövning: väntar" in main and "Godkännande: kommer" in main
    assert "Ringde beställaren, bekräftat hot" in main  # the callback note
    assert assessor.page.get_by_role("button", name=f"Registrera menprövning för {waiting}").count() == 1
    assessor.check("q14-order-waiting-assessment")

    # Waiting for approval: the head sees the assessment (rationale, review) and decides here.
    approval = seeded(ad, "awaiting_approval", decisions=(ASSESSED,))
    head = _as(visit, "head")
    head.goto(f"/bestallningar/{approval}")
    box = head.page.locator("#decision").inner_text()
    assert "Risk för allvarligt men för patienten" in box and "180 dagar" in box
    head.page.get_by_role("button", name=f"Registrera beslut för {approval}").click()  # nothing chosen
    head.page.locator(".error-summary").wait_for()
    assert head.page.get_by_role("heading", level=1).inner_text() == f"Beställning {approval}"
    head.check("q14-order-approval-errors")

    # A guardian block: the guardian's masked number, for the people who act on it.
    guardian = seeded(ad, "awaiting_approval", order_type="block_guardian", actions=[], decisions=(ASSESSED,),
                      guardian_pnr="198001019802")
    head.goto(f"/bestallningar/{guardian}")
    assert "19800101-****" in head.page.locator("main").inner_text()
    head.check("q14-order-guardian-block")

    # Completed: every stage done, who and when; not required stages say why.
    done = seeded(ad, "completed", harm=NO_HARM, decisions=(APPROVED,), initiative="patient")
    admin = visit("DEMO-ADMIN", "Administratören")
    admin.goto(f"/bestallningar/{done}")
    main = admin.page.locator("main").inner_text()
    assert "Återuppringning: krävs inte" in main and "Inte brådskande" in main
    assert "Menprövning: krävs inte" in main and "patienten begär själv" in main
    assert "Godkännande: klar" in main and "Verksamhetschef" in main.replace("Verksamhetschefen", "Verksamhetschef")
    run = admin.page.get_by_role("link", name=re.compile("Beställningens körning i Prefect"))
    assert re.fullmatch(r"http://127\.0\.0\.1:4200/runs/flow-run/[0-9a-f-]{36}", run.get_attribute("href") or "")
    admin.check("q14-order-completed")

    # The orderer: support's phone on the page, the callback phone, withdrawing asks first.
    clinician = _as(visit, "clinician")
    clinician.goto(f"/bestallningar/{waiting}")
    main = clinician.page.locator("main").inner_text()
    assert "Support" in main and "Återuppringd kl." in main
    assert clinician.page.get_by_role("link", name="Beställningens körning i Prefect").count() == 0
    clinician.page.get_by_role("link", name="Återkalla beställningen…").click()
    clinician.page.wait_for_url(f"**/bestallningar/{waiting}/aterkalla")
    clinician.check("q14-order-withdraw-confirm")
    clinician.page.get_by_role("link", name="Nej, tillbaka till beställningen").click()
    clinician.page.wait_for_url(f"**/bestallningar/{waiting}")
    with ad.db.session() as s:
        assert s.scalar(select(Order.status).where(Order.reference == waiting)) == "awaiting_assessment"


def test_a_queue_by_keyboard_only(visit: Any, live_app: str) -> None:
    """Tab to the order's row, Enter; on the order page Tab to the decision, Space and typing, Enter."""
    with client(live_app, who("clinician")) as c:
        r = c.post("/api/orders", json=body(region=REGION, care_unit_hsa_id=UNIT))
        assert r.status_code == 201, r.text
        ref = r.json()["reference"]
        wait_status(c, ref, "awaiting_assessment")
    v = _as(visit, "assessor")
    page = v.page
    v.goto(f"/ko/menprovning?enhet={UNIT}&typ=seal_or_lock")

    def tab_to(js: str, limit: int = 80) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"() => {{ const el = document.activeElement; return !!el && ({js}); }}"):
                return
        raise AssertionError(f"Tab never reached {js}")

    tab_to("el.id === 'typ'")  # the filters are reachable
    tab_to(f"el.tagName === 'A' && el.textContent.trim() === '{ref}'")
    v.check("q14-queue-keyboard-focus")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/bestallningar/{ref}")
    tab_to("el.id === 'harm_found-yes'")
    page.keyboard.press("Space")
    tab_to("el.id === 'decision-restrict'")
    page.keyboard.press("Space")
    tab_to("el.id === 'rationale'")
    page.keyboard.type("Risk för men, bedömt med tangentbordet")
    tab_to("el.tagName === 'BUTTON' && el.textContent.includes('Registrera menprövning')")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf".*/ko/menprovning\?klar={ref}"))
    assert f"Beslutet för {ref} är registrerat." in page.locator(".notice").inner_text()


def test_a_missed_callback_tells_the_orderer(ad: Adapters, api: Any) -> None:
    from models.tables import Deadline
    missed = seeded(ad, "awaiting_assessment", urgent=True, due=timedelta(minutes=-12))
    with ad.db.session() as s:
        s.add(Deadline(order_reference=missed, kind="callback", due_at=NOW - timedelta(minutes=12)))
    c = api(who("clinician"))
    mine_page = c.get("/bestallningar").text
    row = re.search(rf'<a href="/bestallningar/{missed}">.*?</tr>', mine_page, re.S)
    assert row and "Inte uppringd i tid – eskalerad" in row.group(0)
    assert re.search(r"\d{8}-\*{4}", row.group(0)) and "Försegla 1177 journal" in row.group(0)
    page = c.get(f"/bestallningar/{missed}").text
    assert "Till dig som beställde:" in page and "ring support" in page
    # Not to the others reading it.
    assert "Till dig som beställde:" not in api(who("oncall")).get(f"/bestallningar/{missed}").text


def test_the_on_call_start_page_shows_the_callback_queue_first(api: Any) -> None:
    page = api(who("oncall")).get("/").text
    main = page[page.index('id="main"'):]
    assert main.index('href="/ko/aterringning"') < main.index("<ul class=\"cards\">")
    clinician = api(who("clinician")).get("/").text
    assert 'href="/ko/aterringning"' not in clinician


def test_a_rejected_order_s_remaining_stages_did_not_happen(ad: Adapters, api: Any) -> None:
    rejected = seeded(ad, "rejected", decisions=(("harm_assessment", who("assessor"), "do_not_restrict",
                                                  {"harm_found": False}, "Ingen risk för men"),))
    page = api(who("clinician")).get(f"/bestallningar/{rejected}").text
    assert "Menprövning: <span class=\"stage-state\">klar</span>" in page and "Begränsa inte" in page
    assert "Godkännande: <span class=\"stage-state\">blev inte av</span>" in page
    assert "Ingen risk för men" in page
