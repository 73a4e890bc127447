"""The urgent on-call path against the orders database and a real SMTP server, with the clock pinned.

Pages (on-call vs the support queue) at the edges of office hours, on weekends, holidays and in Östergötland;
the 30-minute callback clock; exactly one escalation, also with two dispatchers or a restart in between; DST
nights. No Prefect server is needed: the page never depends on it (a Prefect outage is simulated). Each test
builds its own adapters (tests' FixedClock, the in-process engine and events) on this module's own database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from sqlalchemy import func, select

from flows import commands, urgent
from flows.bootstrap import build, in_process
from forms import cli
from models.clock import STOCKHOLM, FixedClock, SystemClock
from models.tables import AuditEvent, Deadline, Deviation, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.events import RecordedEvents
from tasks.adapters.notifiers import WebhookNotifier
from tasks.adapters.settings import Settings
from tasks.steps import escalation, orders, paging, stages, urgency
from tests.conftest import ROOT, own_database
from tests.e2e import body, mails, text_of

PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
ONCALL = "DEMO-KALMAR-ONCALL"


def sthlm(*args: int) -> datetime:
    return datetime(*args, tzinfo=STOCKHOLM)  # type: ignore[misc]


def submit_at(ad: Adapters, at: datetime, region: str = "kalmar", urgent_: bool = True, **extra: Any) -> str:
    out = orders.submit(ad, body("seal_or_lock", region=region, urgent=urgent_, **extra),
                        f"DEMO-{region.upper()}-CLINICIAN", at)
    assert out.kind == "created" and out.order is not None, [e.model_dump() for e in out.check.errors]
    return out.order.reference


def no_personal_data(messages: list[EmailMessage]) -> None:
    for m in messages:
        text = text_of(m)
        assert not PNR_SHAPE.search(text), text
        assert "Hot mot patienten" not in text  # free text stays in the database


def missed(ad: Adapters) -> list[dict[str, Any]]:
    """The `order.callback.missed` events the adapters' in-process events recorded (Prefect's in production)."""
    return [e for e in ad.events.sent if e["event"] == escalation.EVENT]  # type: ignore[attr-defined]


def missed_refs(ad: Adapters) -> list[str]:
    return [e["resource"]["order.reference"] for e in missed(ad)]


def count(ad: Adapters, model: Any, **where: Any) -> int:
    with ad.db.session() as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return int(s.scalar(q) or 0)


def escalation_mails(smtp: Path, ref: str) -> list[EmailMessage]:
    return [m for m in mails(smtp, ref) if "ESKALERING" in str(m["Subject"])]


@pytest.fixture(autouse=True)
def _no_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RO_PAGING_WEBHOOK_URL", raising=False)


@pytest.fixture(scope="module")
def urgent_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An orders database of this module's own. These tests move the clock to 2026's DST nights and
    holidays and run the dispatcher at those times; a served flow process of the end-to-end tests that runs
    the dispatcher at the real time must not see (and fire) their orders, nor these tests its orders."""
    yield from own_database(tmp_path_factory, "urgent", first_reference=900000)


@pytest.fixture
def clock() -> FixedClock:
    """The test's clock: each test sets it to its moment (`clock.set(at)`) and moves it."""
    return FixedClock(sthlm(2026, 11, 24, 12, 0))


@pytest.fixture
def ad(settings: Settings, urgent_db: Database, clock: FixedClock) -> Adapters:
    """This test's adapters: this module's database, the test's clock, the in-process engine (an order's
    run goes as far as it can inside the call that starts or resumes it) and events (`ad.events.sent`,
    Prefect's event sender in production), and no paging channel beside the email."""
    return in_process(settings, db=urgent_db, clock=clock, notifiers=[])


def prefect_down() -> Any:
    """Prefect's client pointed at a port nobody listens on, without retries: an outage."""
    return temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0})


def on_prefect(ad: Adapters, **replace: Any) -> Adapters:
    """The same database and clock with the real engine (Prefect's client) instead of the in-process one:
    for the tests of what happens when Prefect is down or hangs."""
    kwargs: dict[str, Any] = {"clock": ad.clock, "events": RecordedEvents(), "notifiers": [], **replace}
    return build(ad.settings, db=ad.db, **kwargs)


# --- who is paged, when ---------------------------------------------------------------------------------

PAGE_CASES = [
    ("kalmar", sthlm(2026, 11, 24, 16, 59), "support_queue", "supportcenter@kalmar.invalid"),
    ("kalmar", sthlm(2026, 11, 24, 17, 0), "on_call", "beredskap@kalmar.invalid"),
    ("kalmar", sthlm(2026, 11, 24, 16, 45), "support_queue", "supportcenter@kalmar.invalid"),  # the gap 16:30–17:00
    ("kalmar", sthlm(2026, 11, 25, 6, 59), "on_call", "beredskap@kalmar.invalid"),
    ("kalmar", sthlm(2026, 11, 25, 7, 0), "support_queue", "supportcenter@kalmar.invalid"),
    ("kalmar", sthlm(2026, 11, 28, 12, 0), "on_call", "beredskap@kalmar.invalid"),           # Saturday
    ("jonkoping", sthlm(2026, 11, 29, 9, 0), "on_call", "beredskap@jonkoping.invalid"),       # Sunday
    ("kalmar", sthlm(2026, 12, 23, 12, 0), "support_queue", "supportcenter@kalmar.invalid"),  # a working Wednesday
    ("kalmar", sthlm(2026, 12, 24, 12, 0), "on_call", "beredskap@kalmar.invalid"),           # julafton (Thursday)
    ("stockholm", sthlm(2026, 12, 31, 10, 0), "on_call", "servicedesk@stockholm.invalid"),    # nyårsafton
    ("ostergotland", sthlm(2026, 11, 24, 10, 0), "on_call", "beredskap@ostergotland.invalid"),  # 24/7 line
    ("ostergotland", sthlm(2026, 11, 24, 16, 59), "on_call", "beredskap@ostergotland.invalid"),
]


@pytest.mark.parametrize(("region", "at", "target", "address"), PAGE_CASES,
                         ids=[f"{c[0]}-{c[1]:%a-%m%d-%H%M}" for c in PAGE_CASES])
def test_page_goes_to_on_call_or_support_queue(ad: Adapters, clock: FixedClock, smtp: Path, region: str,
                                               at: datetime, target: str, address: str) -> None:
    clock.set(at)
    ref = submit_at(ad, clock.now(), region)
    result = paging.page_order(ad, ref, clock.now(), notifiers=[])
    assert result is not None and result.new and result.delivered
    assert (result.target, result.address) == (target, address)
    # Sent at once: it is at the SMTP server when page_order returns, no poll in between.
    got = mails(smtp, ref)
    assert [m["To"] for m in got] == [address]
    text = text_of(got[0])
    due = clock.now() + timedelta(minutes=30)
    assert ref in text and "Försegling och/eller låsning" in text and "DEMO-" in text
    assert f"kl. {due:%H.%M}" in str(got[0]["Subject"]) and f"{due:%Y-%m-%d} kl. {due:%H.%M}" in text
    assert "19121212-****" in text
    no_personal_data(got)
    with ad.db.session() as s:
        audit_rows = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                             AuditEvent.action == "urgent_paged")))
    assert [a.detail["target"] for a in audit_rows] == [target]


def test_page_is_sent_once_however_often_asked(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 18, 0)
    ref = submit_at(ad, at)
    first = paging.page_order(ad, ref, at, notifiers=[])
    again = paging.page_order(ad, ref, at + timedelta(minutes=1), notifiers=[])
    assert first is not None and again is not None
    assert first.new and not again.new and again.delivered
    assert len(mails(smtp, ref)) == 1
    assert ref not in paging.page_unpaged(ad, at + timedelta(minutes=2))  # nothing missing
    assert count(ad, AuditEvent, order_reference=ref, action="urgent_paged") == 1


def test_no_page_for_a_non_urgent_order(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 18, 0)
    ref = submit_at(ad, at, urgent_=False)
    assert paging.page_order(ad, ref, at, notifiers=[]) is None
    assert mails(smtp, ref) == []


def test_housekeeping_sends_a_page_that_never_went_out(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 19, 0)
    ref = submit_at(ad, at)  # stored, but the process "died" before paging
    assert ref in paging.page_unpaged(ad, at + timedelta(seconds=2))
    assert [m["To"] for m in mails(smtp, ref)] == ["beredskap@kalmar.invalid"]


def test_webhook_notifier_beside_the_email(ad: Adapters, smtp: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    hook = WebhookNotifier("https://pager.example.invalid/hook", token="s3cret",
                           transport=httpx.MockTransport(handler))
    at = sthlm(2026, 11, 24, 20, 0)
    ref = submit_at(ad, at)
    result = paging.page_order(ad, ref, at, notifiers=[hook])
    assert result is not None and result.notified == {"webhook": True} and result.delivered
    assert paging.page_order(ad, ref, at, notifiers=[hook]) is not None
    assert len(seen) == 1  # once per page, not per call
    payload = json.loads(seen[0].content)
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert payload["reference"] == ref and payload["target"] == "on_call"
    assert payload["callback_due_at"] == (at + timedelta(minutes=30)).isoformat()
    assert not PNR_SHAPE.search(seen[0].content.decode())


def test_a_broken_webhook_never_stops_the_email(ad: Adapters, smtp: Path) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    at = sthlm(2026, 11, 24, 21, 0)
    ref = submit_at(ad, at)
    result = paging.page_order(ad, ref, at, notifiers=[WebhookNotifier("https://x.invalid",
                                                                       transport=httpx.MockTransport(boom))])
    assert result is not None and result.delivered and result.notified == {"webhook": False}
    assert len(mails(smtp, ref)) == 1


def test_the_adapters_page_through_their_notifiers(ad: Adapters, smtp: Path) -> None:
    """Without `notifiers=`, a page goes to the channels the composition root gave the adapters."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    ad.notifiers = [WebhookNotifier("https://pager.example.invalid/hook", transport=httpx.MockTransport(handler))]
    at = sthlm(2026, 11, 24, 20, 10)
    ref = submit_at(ad, at)
    result = paging.page_order(ad, ref, at)
    assert result is not None and result.notified == {"webhook": True} and len(seen) == 1


def test_webhook_is_off_by_default_and_on_by_setting(urgent_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build(Settings(), db=urgent_db).notifiers == []
    monkeypatch.setenv("RO_PAGING_WEBHOOK_URL", "https://pager.example.invalid/hook")
    [n] = build(Settings(), db=urgent_db).notifiers
    assert isinstance(n, WebhookNotifier) and n.url == "https://pager.example.invalid/hook"


def test_submit_pages_at_once_even_when_prefect_is_down(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 28, 3, 0)  # Saturday night
    ad = on_prefect(ad)
    with prefect_down():
        out = asyncio.run(commands.submit(ad, body("seal_or_lock", urgent=True), "DEMO-KALMAR-CLINICIAN", now=at))
    assert out.order is not None
    ref = out.order.reference
    assert [m["To"] for m in mails(smtp, ref)] == ["beredskap@kalmar.invalid"]  # already at the SMTP server
    with ad.db.session() as s:
        assert orders.get(s, ref).flow_run_id is None  # the run is the reconciler's job now


# --- the callback clock and escalation ---------------------------------------------------------------

def test_callback_at_29_59_means_no_escalation(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 22, 0))
    ref = submit_at(ad, clock.now())
    clock.advance(minutes=29, seconds=59)
    out = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "Uppringd", clock.now()))
    assert out.on_time
    clock.advance(seconds=1)  # 30:00
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []
    clock.advance(hours=5)
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []
    assert missed(ad) == [] and escalation_mails(smtp, ref) == []
    assert count(ad, Deviation, order_reference=ref) == 0
    assert urgency.callback_clock(ad, ref, clock.now()).state == "met"
    # The run takes the stored decision when it gets there; still nothing to escalate.
    stages.receive(ad, ref)
    with ad.db.session() as s:
        order = orders.get(s, ref)
        decision_id = next(d.id for d in order.decisions if d.stage == "callback")
    assert stages.record_decision(ad, ref, "callback", decision_id) == "awaiting_assessment"
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []


def test_callback_at_29_59_through_the_waiting_run(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 23, 0))
    ref = submit_at(ad, clock.now())
    assert asyncio.run(urgent.ensure_run(ad, ref)) is not None  # the run received it and waits for the callback
    run = ad.engine.run_of(ref)  # type: ignore[attr-defined]
    assert run.state == "paused" and run.waiting_key == "callback-0"
    clock.advance(minutes=29, seconds=59)
    out = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "", clock.now()))
    assert out.via == "run" and out.on_time
    assert (run.state, run.waiting_key) == ("paused", "harm-assessment-0")  # the run took it and goes on
    clock.advance(seconds=1)
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []


def test_no_callback_by_30_00_escalates_exactly_once(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 17, 5))
    ref = submit_at(ad, clock.now())
    clock.advance(minutes=29, seconds=59)
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []
    assert urgency.callback_clock(ad, ref, clock.now()).seconds_left == 1
    clock.advance(seconds=1)  # 30:00 exactly
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == [ref]
    for later in (0, 1, 60 * 24):
        assert escalation.escalate_due(ad, clock.now() + timedelta(minutes=later), references=[ref]) == []
    [dev] = _deviations(ad, ref)
    assert (dev.kind, dev.minutes_late) == ("callback_missed", 0)
    assert count(ad, AuditEvent, order_reference=ref, action="callback_escalated") == 1
    [m] = escalation_mails(smtp, ref)
    assert m["To"] == "eskalering@kalmar.invalid"
    assert "17.35" in text_of(m)
    no_personal_data([m])
    [ev] = missed(ad)
    assert ev["resource"]["prefect.resource.id"] == f"order.{ref}"
    assert ev["payload"]["minutes_late"] == 0
    assert datetime.fromisoformat(ev["payload"]["callback_due_at"]) == sthlm(2026, 11, 24, 17, 35)
    assert not PNR_SHAPE.search(json.dumps([ev["resource"], ev["payload"], ev["related"]]))
    c = urgency.callback_clock(ad, ref, clock.now())
    assert (c.state, c.seconds_left, c.minutes_late) == ("missed", 0, 0)
    # A callback made late afterwards is recorded, the deviation stays, nothing escalates again.
    clock.advance(minutes=10)
    late = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "Sent", clock.now()))
    assert not late.on_time
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []
    assert urgency.callback_clock(ad, ref, clock.now()).state == "missed"
    assert len(missed(ad)) == 1 and count(ad, Deviation, order_reference=ref) == 1


def test_a_late_dispatcher_records_the_minutes_late(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 19, 30)
    ref = submit_at(ad, at)
    assert escalation.escalate_due(ad, at + timedelta(minutes=47, seconds=30), references=[ref]) == [ref]
    [dev] = _deviations(ad, ref)
    assert dev.minutes_late == 17


def test_two_dispatchers_at_once_escalate_once(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 20, 30)
    refs = [submit_at(ad, at) for _ in range(3)]
    barrier = threading.Barrier(4)
    results: list[list[str]] = []

    def run() -> None:
        barrier.wait()
        results.append(escalation.escalate_due(ad, at + timedelta(minutes=30), references=refs))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r for rs in results for r in rs) == sorted(refs)
    assert sorted(missed_refs(ad)) == sorted(refs)
    for ref in refs:
        assert count(ad, Deviation, order_reference=ref) == 1
        assert len(escalation_mails(smtp, ref)) == 1


class HoldCommit:
    """Holds the transaction of the thread named `name` open just before it commits, until released: the
    moment two transactions overlap, made to happen on purpose."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reached = threading.Event()
        self.release = threading.Event()

    def _hook(self, s: Any) -> None:
        if threading.current_thread().name == self.name and not self.release.is_set():
            self.reached.set()
            self.release.wait(30)

    def __enter__(self) -> HoldCommit:
        from sqlalchemy import event
        from sqlalchemy.orm import Session
        event.listen(Session, "before_commit", self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event
        from sqlalchemy.orm import Session
        self.release.set()
        event.remove(Session, "before_commit", self._hook)


def _waiting_for_callback(ad: Adapters, clock: FixedClock, at: datetime) -> tuple[str, int, datetime]:
    clock.set(at)
    ref = submit_at(ad, at)
    stages.receive(ad, ref)  # the run received it and waits in its callback stage
    due = at + timedelta(minutes=30)
    [deadline_id] = escalation.due_deadlines(ad, due + timedelta(seconds=1), references=[ref])
    return ref, deadline_id, due


def test_a_callback_committed_just_after_the_dispatcher_read_is_not_escalated(ad: Adapters, clock: FixedClock,
                                                                               smtp: Path) -> None:
    """Recorded at 29:59.9, still being committed when the dispatcher (which read the deadline as due and
    not met) claims it: the claim waits for that commit and then finds the deadline met."""
    ref, deadline_id, due = _waiting_for_callback(ad, clock, sthlm(2026, 11, 25, 1, 0))
    fired: list[Any] = []
    with HoldCommit("callback") as hold:
        callback = threading.Thread(name="callback", target=orders.propose, args=(
            ad, ref, "callback", ONCALL, {"note": "Uppringd"}, due - timedelta(milliseconds=100)))
        callback.start()
        assert hold.reached.wait(30)  # stored, not yet committed
        dispatcher = threading.Thread(target=lambda: fired.append(escalation._fire(ad, deadline_id, due + timedelta(
            milliseconds=100))))
        dispatcher.start()
        dispatcher.join(0.5)
        waited = dispatcher.is_alive()  # on the deadline row, held by the callback's transaction
        hold.release.set()
        callback.join(30)
        dispatcher.join(30)
    assert waited
    assert fired == [None]
    assert count(ad, Deviation, order_reference=ref) == 0 and escalation_mails(smtp, ref) == []
    assert urgency.callback_clock(ad, ref, due + timedelta(minutes=1)).state == "met"
    assert escalation.escalate_due(ad, due + timedelta(hours=1), references=[ref]) == []


def test_a_callback_after_the_dispatcher_claimed_is_late_and_escalates_once(ad: Adapters, clock: FixedClock,
                                                                            smtp: Path) -> None:
    """The other way round: the dispatcher got the deadline row first, the callback waits for its commit.
    One escalation, and the callback is stored (the order goes on)."""
    ref, deadline_id, due = _waiting_for_callback(ad, clock, sthlm(2026, 11, 25, 2, 0))
    fired: list[Any] = []
    with HoldCommit("dispatcher") as hold:
        dispatcher = threading.Thread(name="dispatcher", target=lambda: fired.append(
            escalation._fire(ad, deadline_id, due)))
        dispatcher.start()
        assert hold.reached.wait(30)
        callback = threading.Thread(target=orders.propose, args=(
            ad, ref, "callback", ONCALL, {"note": "Uppringd"}, due + timedelta(milliseconds=100)))
        callback.start()
        callback.join(0.5)
        waited = callback.is_alive()
        hold.release.set()
        dispatcher.join(30)
        callback.join(30)
    assert waited
    assert [m.reference for m in fired] == [ref]
    assert count(ad, Deviation, order_reference=ref) == 1
    with ad.db.session() as s:
        assert [d.state for d in orders.get(s, ref).decisions if d.stage == "callback"] == ["proposed"]
    assert escalation.escalate_due(ad, due + timedelta(hours=1), references=[ref]) == []


def _dispatcher_process(ad: Adapters, now: datetime, refs: list[str]) -> list[str]:
    """The dispatcher in a new process with adapters of its own: only the database connects it to what
    came before."""
    code = ("import json, sys; from datetime import datetime; from flows.bootstrap import in_process; "
            "from tasks.adapters.database import Database; from tasks.steps.escalation import escalate_due; "
            "ad = in_process(db=Database(sys.argv[1]), notifiers=[]); "
            "print(json.dumps(escalate_due(ad, datetime.fromisoformat(sys.argv[2]), references=sys.argv[3:])))")
    out = subprocess.run([sys.executable, "-c", code, ad.db.url, now.isoformat(), *refs], cwd=ROOT,
                         env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_escalation_survives_a_restart_in_between(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 21, 30))
    ref = submit_at(ad, clock.now())
    clock.advance(minutes=10)
    assert _dispatcher_process(ad, clock.now(), [ref]) == []         # running, then everything stops
    clock.advance(minutes=20)                                         # back up at 30:00: a new process
    assert _dispatcher_process(ad, clock.now(), [ref]) == [ref]
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == []  # the old one too
    clock.advance(minutes=5)
    assert _dispatcher_process(ad, clock.now(), [ref]) == []
    assert count(ad, Deviation, order_reference=ref) == 1
    assert len(escalation_mails(smtp, ref)) == 1


def test_a_cancelled_order_is_not_escalated(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 22, 30)
    ref = submit_at(ad, at)
    orders.cancel(ad, ref, "DEMO-KALMAR-CLINICIAN", "Fel patient", at + timedelta(minutes=5))
    assert escalation.escalate_due(ad, at + timedelta(minutes=31), references=[ref]) == []


@pytest.mark.parametrize(("start", "due", "shown"), [
    # Spring forward: 01:45 CET + 30 minutes is 03:15 CEST (02:15 does not exist).
    (datetime(2026, 3, 29, 0, 45, tzinfo=UTC), datetime(2026, 3, 29, 1, 15, tzinfo=UTC), "2026-03-29 kl. 03.15 CEST"),
    # Fall back: 02:45 CEST + 30 minutes is 02:15 CET (the second 02:15), not 03:15.
    (datetime(2026, 10, 25, 0, 45, tzinfo=UTC), datetime(2026, 10, 25, 1, 15, tzinfo=UTC), "2026-10-25 kl. 02.15 CET"),
    # …and 02:45 CET (the second one) + 30 minutes is 03:15 CET.
    (datetime(2026, 10, 25, 1, 45, tzinfo=UTC), datetime(2026, 10, 25, 2, 15, tzinfo=UTC), "2026-10-25 kl. 03.15 CET"),
], ids=["spring-forward", "fall-back-first-0245", "fall-back-second-0245"])
def test_dst_nights_keep_30_elapsed_minutes(ad: Adapters, clock: FixedClock, smtp: Path, start: datetime,
                                            due: datetime, shown: str) -> None:
    clock.set(start)
    ref = submit_at(ad, clock.now())
    with ad.db.session() as s:
        assert orders.get(s, ref).callback_due_at == due
    page = paging.page_order(ad, ref, clock.now(), notifiers=[])
    assert page is not None and page.target == "on_call"  # a Sunday night
    assert shown in text_of(mails(smtp, ref)[0])
    assert escalation.escalate_due(ad, due - timedelta(seconds=1), references=[ref]) == []
    assert escalation.escalate_due(ad, due, references=[ref]) == [ref]
    assert escalation.escalate_due(ad, due + timedelta(hours=1), references=[ref]) == []
    assert [d.minutes_late for d in _deviations(ad, ref)] == [0]
    assert shown in text_of(escalation_mails(smtp, ref)[0])
    assert missed_refs(ad) == [ref]


@pytest.mark.parametrize(("due", "started"), [
    # Spring forward: due 03:15 CEST, so the clock started at 01:45 CET (wall clock: 90 minutes earlier).
    (datetime(2026, 3, 29, 3, 15, tzinfo=STOCKHOLM), datetime(2026, 3, 29, 0, 45, tzinfo=UTC)),
    # Fall back: due at the second 02:15 (CET), so started at the first 02:45 (CEST): wall clock 30 minutes *later*.
    (datetime(2026, 10, 25, 2, 15, fold=1, tzinfo=STOCKHOLM), datetime(2026, 10, 25, 0, 45, tzinfo=UTC)),
    # The hour after: due 03:15 CET, started at the second 02:45 (CET).
    (datetime(2026, 10, 25, 3, 15, tzinfo=STOCKHOLM), datetime(2026, 10, 25, 1, 45, tzinfo=UTC)),
], ids=["spring-forward", "fall-back-into-the-repeated-hour", "fall-back-after-it"])
def test_clock_started_from_a_stockholm_time_value_on_dst_nights(due: datetime, started: datetime) -> None:
    """tasks/paging.py used to subtract the 30 minutes in wall-clock time: right for the UTC values the database
    gives, an hour off for a Stockholm-time value on a DST night."""
    from models.regions import load_regions
    from models.tables import Order
    kalmar = load_regions()["kalmar"]
    for value in (due, due.astimezone(UTC)):
        got = paging.clock_started(Order(callback_due_at=value), kalmar)
        # In UTC: Python never calls a time in the repeated hour equal to one in another zone (PEP 495).
        assert got.astimezone(UTC) == started and got.tzinfo is value.tzinfo  # the caller's zone
        assert value.astimezone(UTC) - got.astimezone(UTC) == timedelta(minutes=30)


def test_ostergotlands_page_asks_for_no_callback(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 10, 0)
    ref = submit_at(ad, at, "ostergotland")
    assert paging.page_order(ad, ref, at, notifiers=[]) is not None
    [m] = mails(smtp, ref)
    text = text_of(m)
    assert "registrera kontakten med beställaren senast kl. 10.30" in str(m["Subject"])
    assert "Regionen lovar ingen uppringning" in text and "2026-11-24 kl. 10.30 CET (30 minuter från" in text
    assert "väntar på kontakt" in text and "väntar på återuppringning" not in text


def test_a_region_without_a_callback_promise_set_says_so_in_the_page(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 10, 0)
    ref = submit_at(ad, at, "jonkoping")
    assert paging.page_order(ad, ref, at, notifiers=[]) is not None
    text = text_of(mails(smtp, ref)[0])
    assert "Ring upp beställaren senast 2026-11-24 kl. 10.30 CET" in text
    assert "Utlovad tid för uppringning: Ej inställt – kontakta regionens 1177-förvaltning." in text


def test_without_the_demo_an_unset_mailbox_pages_nobody_and_the_sweep_keeps_trying(
        ad: Adapters, smtp: Path, caplog: pytest.LogCaptureFixture) -> None:
    at = sthlm(2026, 11, 24, 22, 0)
    ref = submit_at(ad, at)
    production = in_process(ad.settings.model_copy(update={"demo": False}), db=ad.db, clock=ad.clock)
    assert paging.page_safely(production, ref, at) is None  # not queued: the mailbox has no sourced address
    assert ref not in paging.page_unpaged(production, at + timedelta(minutes=1))
    assert "on_call_email is not set" in caplog.text or "MailboxUnset" in caplog.text
    assert mails(smtp, ref) == []
    assert ref in paging.page_unpaged(ad, at + timedelta(minutes=2))  # once the mailbox resolves, it goes out
    assert [m["To"] for m in mails(smtp, ref)] == ["beredskap@kalmar.invalid"]


def _deviations(ad: Adapters, ref: str) -> list[Deviation]:
    with ad.db.session() as s:
        return list(s.scalars(select(Deviation).where(Deviation.order_reference == ref)))


# --- making an existing order urgent ----------------------------------------------------------------

def test_make_a_submitted_order_urgent_before_its_run_receives_it(ad: Adapters, clock: FixedClock,
                                                                   smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 21, 50)
    ref = submit_at(ad, at, urgent_=False)
    clock.set(at + timedelta(minutes=10))
    out = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, clock.now(), check_actor=True, start_run=False))
    assert out.made_urgent and out.paged == "on_call" and out.page_delivered
    assert out.callback_due_at == clock.now() + timedelta(minutes=30)
    assert [m["To"] for m in mails(smtp, ref)] == ["beredskap@kalmar.invalid"]
    assert stages.receive(ad, ref) == "awaiting_callback"  # the run now waits for the callback
    with ad.db.session() as s:
        order = orders.get(s, ref)
        assert order.urgent and order.stage_plan["callback"]["required"]
        assert order.stage_plan["approval"]["role"] == "bakjour"  # urgent out of office hours


def test_make_urgent_after_the_callback_stage_keeps_the_clock_in_the_database(ad: Adapters, clock: FixedClock,
                                                                              smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 10, 0))
    ref = submit_at(ad, clock.now(), urgent_=False)
    assert stages.receive(ad, ref) == "awaiting_assessment"
    clock.set(sthlm(2026, 11, 24, 22, 0))
    out = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, clock.now(), start_run=False))
    assert out.made_urgent and out.status == "awaiting_assessment" and out.paged == "on_call"
    with ad.db.session() as s:
        order = orders.get(s, ref)
        assert order.stage_plan["approval"]["role"] == "bakjour"
        assert [d.kind for d in s.scalars(select(Deadline).where(Deadline.order_reference == ref)
                                          .order_by(Deadline.id))] == ["due", "callback"]
    clock.advance(minutes=12)
    cb = asyncio.run(urgent.record_callback(ad, ref, ONCALL, "Uppringd", clock.now()))
    assert (cb.via, cb.on_time, cb.status) == ("stored", True, "awaiting_assessment")
    assert urgency.callback_clock(ad, ref, clock.now()).state == "met"
    assert escalation.escalate_due(ad, clock.now() + timedelta(hours=1), references=[ref]) == []
    with pytest.raises(orders.Conflict):  # once is enough
        asyncio.run(urgent.record_callback(ad, ref, ONCALL, "", clock.now()))


def test_made_urgent_in_office_hours_goes_to_the_queue_and_the_head_still_approves(ad: Adapters, clock: FixedClock,
                                                                                   smtp: Path) -> None:
    clock.set(sthlm(2026, 11, 24, 9, 0))
    ref = submit_at(ad, clock.now(), urgent_=False)
    stages.receive(ad, ref)
    out = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, sthlm(2026, 11, 24, 11, 0), start_run=False))
    assert out.paged == "support_queue"
    with ad.db.session() as s:
        assert orders.get(s, ref).stage_plan["approval"]["role"] == "head_of_department"


def test_making_urgent_twice_changes_nothing(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 18, 30)
    ref = submit_at(ad, at, urgent_=False)
    first = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, at, start_run=False))
    again = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, at + timedelta(minutes=5), start_run=False))
    assert first.made_urgent and not again.made_urgent
    assert again.callback_due_at == first.callback_due_at
    assert count(ad, Deadline, order_reference=ref, kind="callback") == 1
    assert len(mails(smtp, ref)) == 1
    # An order submitted urgent is already urgent: the command only makes sure of the page.
    ref2 = submit_at(ad, at)
    assert not asyncio.run(urgent.start_urgent(ad, ref2, ONCALL, at, start_run=False)).made_urgent
    assert len(mails(smtp, ref2)) == 1


def test_who_may_make_an_order_urgent(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 18, 40)
    ref = submit_at(ad, at, urgent_=False)
    for actor, code in (("DEMO-KALMAR-CLINICIAN2", "wrong_role"), ("DEMO-JONKOPING-ONCALL", "other_region"),
                        ("DEMO-NOBODY", "not_found")):
        with pytest.raises(orders.Forbidden) as exc:
            urgency.make_urgent(ad, ref, actor, at, check_actor=True)
        assert exc.value.refusal.code == code
    assert urgency.make_urgent(ad, ref, "DEMO-KALMAR-SUPPORT", at, check_actor=True).changed
    with pytest.raises(orders.Forbidden):  # recording the callback has its own check
        asyncio.run(urgent.record_callback(ad, ref, "DEMO-KALMAR-CLINICIAN2", "", at))


def test_an_ended_order_cannot_be_made_urgent(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 18, 50)
    ref = submit_at(ad, at, urgent_=False)
    orders.cancel(ad, ref, "DEMO-KALMAR-CLINICIAN", "", at)
    with pytest.raises(orders.Conflict):
        urgency.make_urgent(ad, ref, ONCALL, at)
    with pytest.raises(orders.NotFound):
        urgency.make_urgent(ad, "RO-2026-999999", ONCALL, at)
    with pytest.raises(ValueError) as exc:
        urgency.make_urgent(ad, "19121212-1212", ONCALL, at)
    assert "1912" not in str(exc.value)  # what was typed is never echoed


def test_start_urgent_pages_before_prefect_and_without_it(ad: Adapters, smtp: Path) -> None:
    at = sthlm(2026, 11, 24, 23, 15)
    ref = submit_at(ad, at, urgent_=False)
    ad = on_prefect(ad)
    with prefect_down():
        out = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, at))
    assert out.flow_run_id is None and out.page_delivered
    assert len(mails(smtp, ref)) == 1


def test_start_urgent_makes_sure_the_run_is_going(ad: Adapters, clock: FixedClock, smtp: Path) -> None:
    """With an engine that answers, the order's run is started (here in-process: it waits for the callback)
    and tagged urgent."""
    clock.set(sthlm(2026, 11, 24, 23, 20))
    ref = submit_at(ad, clock.now(), urgent_=False)
    out = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, clock.now()))
    run = ad.engine.run_of(ref)  # type: ignore[attr-defined]
    assert out.flow_run_id == run.id and out.status == "awaiting_callback" and out.page_delivered
    assert (run.state, run.waiting_key, "urgent" in run.tags) == ("paused", "callback-0", True)
    again = asyncio.run(urgent.start_urgent(ad, ref, ONCALL, clock.advance(minutes=1)))
    assert again.flow_run_id == run.id and not again.made_urgent and run.segments == 1


# --- the API and the command line ---------------------------------------------------------------------

@pytest.fixture()
def api(ad: Adapters, clock: FixedClock, smtp: Path) -> Iterator[tuple[TestClient, FixedClock]]:
    """The app on the test's adapters (the in-process engine: making an order urgent starts its run in the
    request), its clock at Tuesday 22:00."""
    from forms.app import create_app
    clock.set(sthlm(2026, 11, 24, 22, 0))
    app = create_app(ad)  # the app includes urgent_routes.router
    with TestClient(app, client=("127.0.0.1", 40000)) as c:
        yield c, clock


def _as(user: str) -> dict[str, str]:
    return {"X-Remote-User": user}


def test_api_make_urgent_and_watch_the_clock(ad: Adapters, api: tuple[TestClient, FixedClock], smtp: Path) -> None:
    c, clock = api
    ref = submit_at(ad, clock.now() - timedelta(minutes=3), urgent_=False)
    r = c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as(ONCALL))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["made_urgent"] and data["urgent"] and data["paged"] == "on_call" and data["page_delivered"]
    assert data["seconds_left"] == 1800 and data["callback_due_at"] == "2026-11-24T22:30:00+01:00"
    assert data["run_started"]
    assert ad.engine.run_of(ref).waiting_key == "callback-0"  # type: ignore[attr-defined]  # started in the request
    assert len(mails(smtp, ref)) == 1
    assert c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as("DEMO-KALMAR-SUPPORT")).json()["made_urgent"] is False

    clock.advance(minutes=20)
    r = c.get(f"/api/orders/{ref}/callback-clock", headers=_as(ONCALL))
    assert r.status_code == 200
    assert r.json() | {"recorded_at": None} == {
        "reference": ref, "urgent": True, "state": "running", "callback_due_at": "2026-11-24T22:30:00+01:00",
        "seconds_left": 600, "met": False, "missed": False, "recorded_at": None, "escalated_at": None,
        "minutes_late": None}
    # The submitter reads the clock too; another clinician may not.
    assert c.get(f"/api/orders/{ref}/callback-clock", headers=_as("DEMO-KALMAR-CLINICIAN")).status_code == 200
    assert c.get(f"/api/orders/{ref}/callback-clock", headers=_as("DEMO-KALMAR-CLINICIAN2")).status_code == 403
    clock.advance(minutes=10)
    assert escalation.escalate_due(ad, clock.now(), references=[ref]) == [ref]
    body_ = c.get(f"/api/orders/{ref}/callback-clock", headers=_as(ONCALL)).json()
    assert (body_["state"], body_["missed"], body_["seconds_left"], body_["minutes_late"]) == ("missed", True, 0, 0)
    assert body_["escalated_at"] == "2026-11-24T22:30:00+01:00"


def test_api_refusals(ad: Adapters, api: tuple[TestClient, FixedClock]) -> None:
    c, clock = api
    ref = submit_at(ad, clock.now(), urgent_=False)
    assert c.post(f"/api/orders/{ref}/urgent", json={}).status_code == 401
    assert c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as("DEMO-NOBODY")).status_code == 401
    r = c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as("DEMO-KALMAR-CLINICIAN"))
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "wrong_role"
    r = c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as("DEMO-STOCKHOLM-ONCALL"))
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "other_region"
    assert c.post("/api/orders/RO-2026-999999/urgent", json={}, headers=_as(ONCALL)).status_code == 404
    assert c.post("/api/orders/not-a-ref/urgent", json={}, headers=_as(ONCALL)).status_code == 404
    assert c.get("/api/orders/RO-2026-999999/callback-clock", headers=_as(ONCALL)).status_code == 404
    orders.cancel(ad, ref, "DEMO-KALMAR-CLINICIAN", "", clock.now())
    assert c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as(ONCALL)).status_code == 409
    # Not urgent: the clock says so.
    other = submit_at(ad, clock.now(), urgent_=False)
    assert c.get(f"/api/orders/{other}/callback-clock", headers=_as(ONCALL)).json()["state"] == "none"


def test_api_callback_on_an_order_made_urgent_after_its_callback_stage(ad: Adapters, api: tuple[TestClient, FixedClock]) -> None:
    c, clock = api
    ref = submit_at(ad, clock.now() - timedelta(minutes=5), urgent_=False)
    assert stages.receive(ad, ref) == "awaiting_assessment"
    assert c.post(f"/api/orders/{ref}/callback", headers=_as(ONCALL), json={"note": "x"}).status_code == 409
    assert c.post(f"/api/orders/{ref}/urgent", json={}, headers=_as(ONCALL)).status_code == 200
    r = c.post(f"/api/orders/{ref}/callback", headers=_as(ONCALL), json={"note": "Uppringd"})
    assert r.status_code == 202, r.text
    assert r.json() == {"reference": ref, "stage": "callback", "status": "awaiting_assessment", "decision": "accepted"}
    assert c.get(f"/api/orders/{ref}/callback-clock", headers=_as(ONCALL)).json()["state"] == "met"
    again = c.post(f"/api/orders/{ref}/callback", headers=_as(ONCALL), json={"note": ""})
    assert again.status_code == 409 and again.json()["errors"][0]["code"] == "wrong_status"


def test_api_callback_before_the_run_has_received_the_order(ad: Adapters, api: tuple[TestClient, FixedClock]) -> None:
    """Prefect was down at submit: the order is still `submitted`, yet on-call has already called back."""
    c, clock = api
    ref = submit_at(ad, clock.now())
    r = c.post(f"/api/orders/{ref}/callback", headers=_as("DEMO-KALMAR-SUPPORT"), json={"note": ""})
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["decision"]) == ("submitted", "proposed")
    # When the run receives the order it takes the stored callback instead of waiting for one.
    assert stages.receive(ad, ref) == "awaiting_callback"
    with ad.db.session() as s:
        assert [(d.stage, d.state) for d in orders.get(s, ref).decisions] == [("callback", "proposed")]


def _page_token(c: TestClient, path: str, user: str) -> tuple[str, str]:
    page = c.get(path, headers=_as(user))
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert token
    return page.text, token.group(1)


def test_order_page_make_urgent_countdown_and_callback(ad: Adapters, api: tuple[TestClient, FixedClock], smtp: Path) -> None:
    c, clock = api
    clock.set(datetime.now(UTC))
    ref = submit_at(ad, clock.now() - timedelta(minutes=2), urgent_=False)
    stages.receive(ad, ref)
    html, _ = _page_token(c, f"/bestallningar/{ref}", "DEMO-KALMAR-CLINICIAN")
    assert "Gör beställningen brådskande" not in html  # the orderer phones support instead
    html, token = _page_token(c, f"/bestallningar/{ref}", ONCALL)
    assert "Gör beställningen brådskande" in html and "callback-title" not in html
    r = c.post(f"/bestallningar/{ref}/bradskande", data={"csrf_token": token}, headers=_as(ONCALL),
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/bestallningar/{ref}?bradskande=1"
    # The page to on-call, and (issue 13) the assessor told at once that the now urgent order waits for them.
    assert sorted(str(m["To"]) for m in mails(smtp, ref)) == ["beredskap@kalmar.invalid",
                                                             "demo-kalmar-assessor@kalmar.invalid"]
    html, token = _page_token(c, f"/bestallningar/{ref}?bradskande=1", ONCALL)
    assert "beredskapen (eller supportkön) är larmad" in html
    left = re.search(r'role="timer" aria-live="off" data-seconds-left="(\d+)">(\d+) min (\d+) s kvar', html)
    assert left and 1790 <= int(left.group(1)) <= 1800, html
    assert int(left.group(2)) * 60 + int(left.group(3)) == int(left.group(1)), html  # "29 min 55 s kvar"
    # The callback queue lists the running clock although the order waits for its assessment.
    queue, _ = _page_token(c, "/ko/aterringning", ONCALL)
    assert ref in queue and "Ring upp senast" in queue
    r = c.post(f"/bestallningar/{ref}/aterringning", data={"csrf_token": token, "note": "Uppringd"},
               headers=_as(ONCALL), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?uppringd=1")
    html, _ = _page_token(c, r.headers["location"], ONCALL)
    assert "i tid" in html and "Registrera återuppringning" not in html
    assert "Gjord brådskande av beredskap eller support" in html  # the plan tells readers why
    assert ref not in _page_token(c, "/ko/aterringning", ONCALL)[0]


def test_api_routes_are_in_the_openapi_schema(ad: Adapters, api: tuple[TestClient, FixedClock]) -> None:
    c, _ = api
    paths = c.get("/openapi.json").json()["paths"]
    assert "post" in paths["/api/orders/{reference}/urgent"]
    assert "get" in paths["/api/orders/{reference}/callback-clock"]


def test_cli_urgent_callback_clock_escalate(ad: Adapters, clock: FixedClock, smtp: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The command line builds its adapters from the environment (flows.bootstrap.build): here, the test's.
    monkeypatch.setattr("flows.bootstrap.build", lambda *args, **kwargs: ad)
    clock.set(datetime.now(UTC))
    ref = submit_at(ad, clock.now(), urgent_=False)
    assert cli.main(["urgent", ref, "--by", ONCALL]) == 0
    out = capsys.readouterr().out
    assert f"{ref}: gjord brådskande" in out and "återuppringning senast" in out
    assert len(mails(smtp, ref)) == 1
    assert cli.main(["callback", ref, "--by", ONCALL, "--note", "Uppringd"]) == 0
    assert "i tid" in capsys.readouterr().out
    assert cli.main(["clock", ref]) == 0
    assert f"{ref}: met" in capsys.readouterr().out

    late = submit_at(ad, clock.now() - timedelta(minutes=31))
    assert cli.main(["escalate", "--reference", late]) == 0
    assert "eskalerade: 1" in capsys.readouterr().out
    assert cli.main(["escalate", "--reference", late]) == 0
    assert "eskalerade: 0" in capsys.readouterr().out
    assert missed_refs(ad) == [late]

    assert cli.main(["urgent", "RO-2026-999999"]) == 1
    assert cli.main(["urgent", "19121212-1212"]) == 1
    assert cli.main(["callback", ref, "--by", "DEMO-KALMAR-CLINICIAN"]) == 1
    captured = capsys.readouterr()
    assert "1912" not in captured.out + captured.err
    assert cli.main(["automations", "--print"]) == 0
    names = [a["name"] for a in json.loads(capsys.readouterr().out)["automations"]]
    assert names == ["Missed urgent callback", "Order run failed", "Crash unresponsive order runs",
                     "Stored decision not moving", "Overdue order", "Monitoring run failed", "Audit chain broken"]


def test_cli_is_installed_as_a_console_script() -> None:
    exe = Path(sys.executable).with_name("restriction-orders")
    assert exe.exists(), "pip install -e . installs the console script"
    started = time.monotonic()
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "urgent" in out.stdout and "callback" in out.stdout
    assert time.monotonic() - started < 60


# --- dispatchers that do not depend on Prefect ---------------------------------------------------------

class HangingApi:
    """A Prefect API that accepts connections and never answers (a hung server)."""

    def __init__(self) -> None:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/api"
        self.conns: list[Any] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for c in [*self.conns, self.sock]:
            c.close()


def test_escalation_never_waits_for_a_hanging_prefect(ad: Adapters, smtp: Path) -> None:
    """The serving process's two loops: the reconciler stuck on a Prefect API that does not answer, the
    urgent dispatcher beside it escalates at once (it used to run after the reconciler, in the same loop)."""
    from flows import serve
    ad = on_prefect(ad, clock=SystemClock())
    ref = submit_at(ad, datetime.now(UTC) - timedelta(minutes=31))  # no run: the reconciler tries to start one
    api = HangingApi()
    stop = threading.Event()

    def reconciler() -> None:
        with temporary_settings(updates={PREFECT_API_URL: api.url}):
            serve.housekeeping_loop(ad, 0.2, stop)
    loop = threading.Thread(target=reconciler, daemon=True)
    loop.start()
    dispatcher, stop_dispatcher = escalation.start_dispatcher(ad, 0.2, name="test-urgent-dispatch")
    try:
        deadline = time.monotonic() + 30
        while not api.conns and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.conns, "the reconciler never called Prefect"
        started = time.monotonic()
        while ref not in missed_refs(ad) and time.monotonic() - started < 8:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert count(ad, Deviation, order_reference=ref) == 1, "not escalated while Prefect hangs"
        assert took < 8  # the fail-fast client gives up after 10 s; the old loop waited minutes
        assert loop.is_alive()
    finally:
        stop.set()
        stop_dispatcher.set()
        api.close()
        loop.join(15)
        dispatcher.join(15)
    assert not loop.is_alive() and not dispatcher.is_alive()


def test_the_app_runs_its_own_dispatcher_when_asked(ad: Adapters, settings: Settings, smtp: Path) -> None:
    from forms import app as app_module

    def dispatchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "app-urgent-dispatch"]
    assert settings.app_dispatch_seconds == 0  # the tests' default (conftest): no thread in every app
    with TestClient(app_module.create_app(ad), client=("127.0.0.1", 40000)):
        assert dispatchers() == []
    ref = submit_at(ad, datetime.now(UTC) - timedelta(minutes=31))
    dispatching = in_process(settings.model_copy(update={"app_dispatch_seconds": 0.2}), db=ad.db,
                             clock=SystemClock(), notifiers=[])
    with TestClient(app_module.create_app(dispatching), client=("127.0.0.1", 40000)):
        assert len(dispatchers()) == 1
        deadline = time.monotonic() + 15
        while not count(ad, Deviation, order_reference=ref) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(ad, Deviation, order_reference=ref) == 1
    assert dispatchers() == []  # stopped with the app
    assert len(escalation_mails(smtp, ref)) == 1
    assert ref in missed_refs(dispatching)


def test_outbox_rows_carry_no_personal_data(ad: Adapters) -> None:
    with ad.db.session() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.event.in_(["paged", "support-queue"]))))
    assert rows
    for r in rows:
        assert not PNR_SHAPE.search(r.subject + r.body_text + r.body_html)
