"""Issue 13 items 1 and 2: who is told when an order waits for them, and an urgent order's execution target.

On the in-process engine (no Prefect), a database of this module's own, the real SMTP sink and a fixed clock:
an order's run goes as far as it can inside the call that starts or resumes it, so the moment a stage starts
waiting is the moment of the command. Times are Stockholm local; 2026-11-24 is a Tuesday.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flows import commands
from flows.bootstrap import in_process
from models.clock import STOCKHOLM, FixedClock
from models.regions import load_regions
from models.tables import AuditEvent, Deadline, Deviation, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.gateway import ConfiguredGateway
from tasks.adapters.notifiers import WebhookNotifier
from tasks.adapters.settings import Settings
from tasks.steps import escalation, notifications, notifications_digest, notifications_escalation, orders
from tests.conftest import own_database
from tests.e2e import mails, text_of
from tests.monitoring_support import body, patient

PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
CLINICIAN = "DEMO-KALMAR-CLINICIAN"
ONCALL = "DEMO-KALMAR-ONCALL"
ASSESSOR = "DEMO-KALMAR-ASSESSOR"
HEAD = "DEMO-KALMAR-HEAD"
BAKJOUR = "DEMO-KALMAR-BAKJOUR"
ADMIN = "DEMO-KALMAR-ACCOUNTADMIN"
ASSESS = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 180}


def sthlm(*args: int) -> datetime:
    return datetime(*args, tzinfo=STOCKHOLM)  # type: ignore[misc]


@pytest.fixture(scope="module")
def notify_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """Its own database: the dispatcher runs here at 2026's clock and must not see other modules' orders."""
    yield from own_database(tmp_path_factory, "notify", first_reference=930000)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(sthlm(2026, 11, 24, 22, 30))


@pytest.fixture
def ad(settings: Settings, notify_db: Database, clock: FixedClock) -> Adapters:
    return in_process(settings, db=notify_db, clock=clock, notifiers=[])


@pytest.fixture(autouse=True)
def _quiet_outbox(notify_db: Database) -> Iterator[None]:
    """Each test starts with the orders of earlier tests ended, so the digest and sweeps see only its own."""
    yield
    with notify_db.session() as s:
        from models.tables import Order
        for o in s.scalars(select(Order).where(Order.status.not_in(["completed", "rejected", "cancelled",
                                                                      "failed"]))):
            o.status = "cancelled"


def submit(ad: Adapters, urgent: bool = True, **extra: Any) -> str:
    out = asyncio.run(commands.submit(ad, body(patient(), urgent=urgent, **extra), CLINICIAN, now=ad.clock.now()))
    assert out.kind == "created" and out.order is not None, [e.model_dump() for e in out.check.errors]
    return out.order.reference


def decide(ad: Adapters, ref: str, stage: str, actor: str, decision: dict[str, Any]) -> str:
    order = asyncio.run(commands.decide(ad, ref, stage, actor, decision, now=ad.clock.now()))
    with ad.db.session() as s:
        return orders.get(s, order.reference).status


def order_of(ad: Adapters, ref: str) -> Any:
    with ad.db.session() as s:
        return orders.get(s, ref)


def work_mails(smtp: Path, ref: str, stage: str) -> list[EmailMessage]:
    return [m for m in mails(smtp, ref) if f".waiting-{stage}." in str(m["Message-ID"])]


def no_personal_data(messages: list[EmailMessage]) -> None:
    for m in messages:
        text = text_of(m)
        assert not PNR_SHAPE.search(text), text
        assert "Hot mot patienten" not in text and "Risk för men" not in text  # free text stays in the database
        assert "Menprövaren" not in text and "Bakjouren" not in text  # no names either


def count(ad: Adapters, model: Any, **where: Any) -> int:
    with ad.db.session() as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return int(s.scalar(q) or 0)


# --- item 2: the urgent execution target -----------------------------------------------------------------

@pytest.mark.parametrize("at", [sthlm(2026, 11, 24, 22, 30), sthlm(2026, 11, 28, 23, 10),  # Tuesday, Saturday night
                                sthlm(2026, 12, 24, 12, 0)],                                   # julafton
                         ids=["tuesday-2230", "saturday-2310", "julafton-1200"])
def test_an_urgent_order_is_due_hours_after_submission_and_stays_so(ad: Adapters, clock: FixedClock,
                                                                    smtp: Path, at: datetime) -> None:
    clock.set(at)
    ref = submit(ad)
    o = order_of(ad, ref)
    assert (o.callback_due_at, o.due_at) == (at + timedelta(minutes=30), at + timedelta(hours=4))
    clock.advance(minutes=12)
    assert decide(ad, ref, "callback", ONCALL, {"note": ""}) == "awaiting_assessment"
    o = order_of(ad, ref)
    assert o.due_at == at + timedelta(hours=4), "the callback must not move the target to a working day"
    assert count(ad, AuditEvent, order_reference=ref, action="due_rescheduled") == 0
    with ad.db.session() as s:
        due_rows = list(s.scalars(select(Deadline).where(Deadline.order_reference == ref, Deadline.kind == "due")))
    assert [d.due_at for d in due_rows] == [at + timedelta(hours=4)]
    # The red list and the reminders run on it: red after the target, not after the callback deadline.
    assert not orders.overdue(o, at + timedelta(hours=3, minutes=59))
    assert orders.overdue(o, at + timedelta(hours=4, minutes=1))


def test_urgent_target_hours_is_a_region_setting(settings: Settings, notify_db: Database, clock: FixedClock) -> None:
    regions = load_regions()
    regions["kalmar"] = regions["kalmar"].model_copy(update={"urgent_target_hours": 2})
    ad = in_process(settings, db=notify_db, clock=clock, notifiers=[], regions=regions)
    ref = submit(ad)
    assert order_of(ad, ref).due_at == clock.now() + timedelta(hours=2)


def test_order_page_and_receipt_show_both_deadlines(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    from forms.app import create_app
    clock.set(sthlm(2026, 11, 28, 23, 10))  # Saturday night
    ref = submit(ad)
    with TestClient(create_app(ad), client=("127.0.0.1", 40000)) as c:
        html = c.get(f"/bestallningar/{ref}", headers={"X-Remote-User": ONCALL}).text
        receipt = c.get(f"/bestallningar/{ref}/kvitto", headers={"X-Remote-User": CLINICIAN}).text
    assert re.search(r"Återuppringning senast</dt><dd>lördag 28 november 2026 kl\. 23\.40</dd>", receipt), receipt
    assert re.search(r"Genomförd senast</dt><dd>söndag 29 november 2026 kl\. 03\.10</dd>", receipt), receipt
    assert re.search(r"Återuppringning senast</strong> lördag 28 november 2026 kl\. 23\.40", html), html
    # Sunday 03:10: never Monday's office end.
    assert re.search(r"Genomförd senast</strong> söndag 29 november 2026 kl\. 03\.10", html), html
    assert "kl. 16.30" not in html


# --- item 1: urgent, told at once --------------------------------------------------------------------

def test_the_assessor_is_told_at_once_once_and_without_personal_data(ad: Adapters, clock: FixedClock,
                                                                     smtp: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json
        seen.append(json.loads(request.content))
        return httpx.Response(204)

    ad.notifiers = [WebhookNotifier("http://sms-gateway.invalid/hook", transport=httpx.MockTransport(handler))]
    ref = submit(ad)
    assert [m["To"] for m in mails(smtp, ref)] == ["beredskap@kalmar.invalid"]  # only the page so far
    called_back = clock.advance(minutes=5)
    assert decide(ad, ref, "callback", ONCALL, {"note": "Uppringd"}) == "awaiting_assessment"
    [m] = work_mails(smtp, ref, "harm_assessment")
    assert m["To"] == "demo-kalmar-assessor@kalmar.invalid"
    assert m["Message-ID"] == f"<{ref}.waiting-harm_assessment.p-{ASSESSOR}@restriction-orders.invalid>"
    text = text_of(m)
    assert ref in text and "Menprövning" in text and "Försegling och/eller låsning" in text
    assert "Demoenheten Region Kalmar län" in text and f"/bestallningar/{ref}" in text
    assert "2026-11-25 kl. 02.30" in text  # genomförd senast: 22:30 + 4 h
    assert "kl. 23.05" in text  # escalates 30 minutes after it started waiting
    assert "BRÅDSKANDE" in str(m["Subject"]) and "02.30" in str(m["Subject"])
    no_personal_data([m])
    # The SMS gateway's webhook, once, with the same facts and the deciders' HSA-ids.
    assert [w["event"] for w in seen] == ["order.urgent.paged", "order.stage.waiting"]  # the page, then this
    assert [(w["reference"], w["stage"], w["recipients"]) for w in seen[1:]] == [
        (ref, "harm_assessment", [{"hsa_id": ASSESSOR, "role": "assessor"}])]
    assert not PNR_SHAPE.search(str(seen))
    # Idempotent: a second announcement, the sweep, a rerun of the run's step: nothing new.
    again = notifications.announce(ad, ref, "harm_assessment", clock.advance(minutes=1))
    assert again is not None and again.new == 0
    assert notifications.announce_unannounced(ad, clock.now()) == []
    assert len(work_mails(smtp, ref, "harm_assessment")) == 1 and len(seen) == 2
    with ad.db.session() as s:
        [row] = s.scalars(select(Deadline).where(Deadline.order_reference == ref,
                                                 Deadline.kind == "unattended:harm_assessment"))
    assert row.due_at == called_back + timedelta(minutes=30)
    assert count(ad, AuditEvent, order_reference=ref, action="work_announced") == 1


def test_approval_goes_to_bakjour_out_of_hours_and_the_head_in_them(ad: Adapters, clock: FixedClock,
                                                                    smtp: Path) -> None:
    night = submit(ad)
    decide(ad, night, "callback", ONCALL, {"note": ""})
    clock.advance(minutes=5)
    assert decide(ad, night, "harm_assessment", ASSESSOR, ASSESS) == "awaiting_approval"
    assert [m["To"] for m in work_mails(smtp, night, "approval")] == ["demo-kalmar-bakjour@kalmar.invalid"]
    assert "bakjour" in text_of(work_mails(smtp, night, "approval")[0]).lower()

    clock.set(sthlm(2026, 11, 25, 10, 0))  # Wednesday, office hours
    day = submit(ad)
    decide(ad, day, "callback", "DEMO-KALMAR-SUPPORT", {"note": ""})
    assert decide(ad, day, "harm_assessment", ASSESSOR, ASSESS) == "awaiting_approval"
    assert [m["To"] for m in work_mails(smtp, day, "approval")] == ["demo-kalmar-head@kalmar.invalid"]


def test_manual_execution_is_announced_to_the_account_administrators(ad: Adapters, clock: FixedClock,
                                                                     smtp: Path) -> None:
    ad.gateway = ConfiguredGateway("manual", ad.settings.gateway_down_flag)
    ref = submit(ad)
    decide(ad, ref, "callback", ONCALL, {"note": ""})
    decide(ad, ref, "harm_assessment", ASSESSOR, ASSESS)
    assert decide(ad, ref, "approval", BAKJOUR, {"approved": True, "comment": ""}) == "executing"
    [m] = work_mails(smtp, ref, "execution")
    assert m["To"] == "demo-kalmar-accountadmin@kalmar.invalid" and "Manuellt verkställande" in text_of(m)


def test_the_orderer_is_never_asked_to_decide(ad: Adapters, clock: FixedClock) -> None:
    """Four eyes: an assessor who ordered is not among the deciders the rule returns."""
    out = orders.submit(ad, body(patient(), urgent=True), ASSESSOR, clock.now())
    assert out.order is not None
    with ad.db.session() as s:
        o = orders.get(s, out.order.reference)
        o.status = "awaiting_assessment"
        o.stage_plan = {"approval": {"required": True, "role": "bakjour", "rule": "x", "reason": ""}}
        s.flush()
        assert ASSESSOR not in [p.hsa_id for p in notifications.deciders_for(s, o, notifications.Stage.HARM_ASSESSMENT)]


def test_a_run_that_died_before_announcing_is_covered_by_the_sweep(ad: Adapters, clock: FixedClock,
                                                                   smtp: Path) -> None:
    ref = submit(ad)
    with ad.db.session() as s:  # as if the run died between the status change and its announcement
        o = orders.get(s, ref)
        o.status, o.callback_at = "awaiting_assessment", clock.now()
    assert escalation.dispatch(ad, clock.advance(seconds=5))["announced"] == 1
    assert len(work_mails(smtp, ref, "harm_assessment")) == 1
    assert escalation.dispatch(ad, clock.advance(seconds=5))["announced"] == 0


# --- item 1: escalation of an urgent stage nobody acts on ---------------------------------------------

def _waiting_for_assessment(ad: Adapters, clock: FixedClock) -> tuple[str, datetime]:
    ref = submit(ad)
    clock.advance(minutes=3)
    decide(ad, ref, "callback", ONCALL, {"note": ""})
    return ref, clock.now()


def test_an_unattended_stage_escalates_exactly_once(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    ref, waiting_since = _waiting_for_assessment(ad, clock)
    assert escalation.dispatch(ad, waiting_since + timedelta(minutes=29))["unattended"] == 0
    at = waiting_since + timedelta(minutes=31)
    # Two dispatchers at once, and again later: one escalation.
    results: list[list[str]] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        barrier.wait()
        results.append(notifications_escalation.escalate_unattended(ad, at))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert escalation.dispatch(ad, at + timedelta(hours=1))["unattended"] == 0
    got = [m for m in mails(smtp, ref) if ".unattended-harm_assessment." in str(m["Message-ID"])]
    assert sorted(str(m["To"]) for m in got) == ["jourhavandechef@kalmar.invalid", "supportcenter@kalmar.invalid"]
    assert "ESKALERING" in str(got[0]["Subject"]) and "menprövning" in str(got[0]["Subject"])
    no_personal_data(got)
    assert [d.kind for d in _deviations(ad, ref)] == ["stage_unattended"]
    assert count(ad, AuditEvent, order_reference=ref, action="stage_escalated") == 1
    assert [e["event"] for e in ad.events.sent if e["event"] == "order.stage.unattended"] == [  # type: ignore[attr-defined]
        "order.stage.unattended"]


def test_acting_in_time_stops_the_escalation(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    ref, waiting_since = _waiting_for_assessment(ad, clock)
    clock.set(waiting_since + timedelta(minutes=20))
    assert decide(ad, ref, "harm_assessment", ASSESSOR, ASSESS) == "awaiting_approval"
    assert escalation.dispatch(ad, waiting_since + timedelta(minutes=31))["unattended"] == 0
    assert _deviations(ad, ref) == []
    with ad.db.session() as s:
        row = s.scalar(select(Deadline).where(Deadline.order_reference == ref,
                                              Deadline.kind == "unattended:harm_assessment"))
    assert row is not None and row.met_at is not None and row.fired_at is None


def _deviations(ad: Adapters, ref: str) -> list[Deviation]:
    with ad.db.session() as s:
        return list(s.scalars(select(Deviation).where(Deviation.order_reference == ref)))


# --- item 1: non-urgent, a digest per person --------------------------------------------------------------

def digests(smtp: Path, slot: str) -> list[EmailMessage]:
    out = []
    for p in sorted(smtp.glob("*.eml")):
        m = BytesParser(policy=policy.default).parsebytes(p.read_bytes())
        if f"DIGEST-kalmar-{slot}." in str(m["Message-ID"]):
            out.append(m)
    return out  # type: ignore[return-value]


def test_non_urgent_orders_come_in_one_digest_per_person_at_the_slots(ad: Adapters, clock: FixedClock,
                                                                      smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 30, 7, 0))  # Monday
    refs = [submit(ad, urgent=False) for _ in range(3)]
    clock.advance(minutes=10)
    assert decide(ad, refs[2], "harm_assessment", ASSESSOR, ASSESS) == "awaiting_approval"
    # No email per order: only the digest tells.
    assert all(work_mails(smtp, r, st) == [] for r in refs for st in ("harm_assessment", "approval"))
    assert notifications_digest.send_digests(ad, sthlm(2026, 11, 30, 7, 59)) == 0  # before the first slot
    assert escalation.dispatch(ad, sthlm(2026, 11, 30, 8, 0, 5))["digests"] == 2
    assert escalation.dispatch(ad, sthlm(2026, 11, 30, 8, 1))["digests"] == 0  # once per slot
    got = {str(m["To"]): text_of(m) for m in digests(smtp, "20261130T0800")}
    assert set(got) == {"demo-kalmar-assessor@kalmar.invalid", "demo-kalmar-head@kalmar.invalid"}
    assert refs[0] in got["demo-kalmar-assessor@kalmar.invalid"] and refs[1] in got["demo-kalmar-assessor@kalmar.invalid"]
    assert refs[2] not in got["demo-kalmar-assessor@kalmar.invalid"]
    assert refs[2] in got["demo-kalmar-head@kalmar.invalid"] and "Godkännande" in got["demo-kalmar-head@kalmar.invalid"]
    assert "2 beställningar" in got["demo-kalmar-assessor@kalmar.invalid"]
    no_personal_data(digests(smtp, "20261130T0800"))
    # 13:00: the next slot; Saturday: none.
    assert notifications_digest.send_digests(ad, sthlm(2026, 11, 30, 13, 0)) == 2
    assert notifications_digest.send_digests(ad, sthlm(2026, 12, 5, 8, 0)) == 0


def test_digest_times_are_a_region_setting() -> None:
    kalmar = load_regions()["kalmar"]
    assert [f"{t:%H:%M}" for t in kalmar.digest_times] == ["08:00", "13:00"]
    late = kalmar.model_copy(update={"digest_times": [datetime(2026, 1, 1, 9, 30).time()]})
    assert notifications_digest.slot_at(sthlm(2026, 11, 30, 9, 29), late) is None
    assert notifications_digest.slot_at(sthlm(2026, 11, 30, 9, 31), late) == sthlm(2026, 11, 30, 9, 30)
    assert notifications_digest.slot_at(sthlm(2026, 12, 24, 9, 31), late) is None  # julafton: not a working day


# --- item 1: each person sees what they were sent -----------------------------------------------------

def test_each_person_sees_what_they_were_sent(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    ref = submit(ad)
    decide(ad, ref, "callback", ONCALL, {"note": ""})
    sent = notifications.sent_to(ad, ASSESSOR)
    assert sent and sent[0].reference == ref and "menprövning" in sent[0].subject
    on_call = notifications.sent_to(ad, ONCALL, limit=50)
    assert any(x.reference == ref and x.to == "beredskap@kalmar.invalid" for x in on_call)  # the role's mailbox
    assert all(x.reference != ref for x in notifications.sent_to(ad, "DEMO-KALMAR-CLINICIAN2"))
    with ad.db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.order_reference == ref)) >= 2


def test_the_start_page_lists_what_was_sent_to_the_person(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    from forms.app import create_app
    ref = submit(ad)
    decide(ad, ref, "callback", ONCALL, {"note": ""})
    with TestClient(create_app(ad), client=("127.0.0.1", 40000)) as c:
        html = c.get("/", headers={"X-Remote-User": ASSESSOR}).text
        other = c.get("/", headers={"X-Remote-User": "DEMO-KALMAR-CLINICIAN2"}).text
    assert "Skickat till dig" in html and f'href="/bestallningar/{ref}"' in html and "väntar på dig" in html
    assert ref not in other


def test_with_nobody_to_decide_the_support_queue_is_told(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    from models.tables import Staff
    with ad.db.session() as s:
        s.get(Staff, ASSESSOR).active = False  # type: ignore[union-attr]
    try:
        ref = submit(ad)
        decide(ad, ref, "callback", ONCALL, {"note": ""})
        [m] = work_mails(smtp, ref, "harm_assessment")
        assert m["To"] == "supportcenter@kalmar.invalid"
    finally:
        with ad.db.session() as s:
            s.get(Staff, ASSESSOR).active = True  # type: ignore[union-attr]
