"""Issue 13, "Done when": the night, end to end through the HTTP API.

An urgent seal and lock placed at 22:30 on a Tuesday in Kalmar (injected clock), through `POST /api/orders`
on the app with the in-process engine (the order's run goes as far as it can inside each request) and the
real SMTP sink on loopback. Everyone acts at once when told: on-call calls back, the assessor assesses, the
bakjour approves, the simulated 1177 executes, the head of department and the orderer are told. After each
step the dispatcher runs (as the housekeeping loop would) and the test asserts the email that step caused,
every deadline, and that nothing waits unannounced. The timeline is written to
tests/artifacts/night-timeline.txt for the closing note.

The second test leaves the assessment stage alone past the region's escalation time (30 minutes) with the
dispatcher running every minute: exactly one escalation, to support and the on-call manager, one deviation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from flows.bootstrap import in_process
from models.clock import STOCKHOLM, FixedClock
from models.routine import STAGE_OF_STATUS, Stage
from models.status import OrderStatus
from models.tables import AuditEvent, Deadline, Deviation, Order, OutboxMessage
from tasks.adapters import Adapters
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tasks.steps import escalation, notifications
from tests.conftest import ROOT, own_database
from tests.e2e import mails, text_of
from tests.monitoring_support import body, patient

PNR_SHAPE = re.compile(r"\b(?:\d{6}|\d{8})[-+]?\d{4}\b")
CLINICIAN = "DEMO-KALMAR-CLINICIAN"
ONCALL = "DEMO-KALMAR-ONCALL"
ASSESSOR = "DEMO-KALMAR-ASSESSOR"
BAKJOUR = "DEMO-KALMAR-BAKJOUR"
NIGHT = datetime(2026, 11, 24, 22, 30, tzinfo=STOCKHOLM)  # a Tuesday, out of office hours, on-call's window
TIMELINE = ROOT / "tests" / "artifacts" / "night-timeline.txt"


@pytest.fixture(scope="module")
def night_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from own_database(tmp_path_factory, "night", first_reference=940000)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NIGHT)


@pytest.fixture
def ad(settings: Settings, night_db: Database, clock: FixedClock) -> Adapters:
    return in_process(settings, db=night_db, clock=clock, notifiers=[])


@pytest.fixture
def api(ad: Adapters, smtp: Path) -> Iterator[TestClient]:
    from forms.app import create_app
    with TestClient(create_app(ad), client=("127.0.0.1", 40000)) as c:
        yield c


def post(c: TestClient, path: str, user: str, payload: dict[str, Any], wanted: int = 202) -> dict[str, Any]:
    r = c.post(path, json=payload, headers={"X-Remote-User": user})
    assert r.status_code == wanted, r.text
    return dict(r.json())


def decide(c: TestClient, ad: Adapters, ref: str, slug: str, user: str, payload: dict[str, Any]) -> str:
    """A decision through the API (202: handed to the order's run); the order's status once the run took it
    (the in-process engine runs it inside the request)."""
    post(c, f"/api/orders/{ref}/{slug}", user, payload)
    return order_row(ad, ref).status


def order_row(ad: Adapters, ref: str) -> Order:
    with ad.db.session() as s:
        o = s.scalar(select(Order).where(Order.reference == ref))
        assert o is not None
        return o


def deadlines(ad: Adapters, ref: str) -> dict[str, Deadline]:
    with ad.db.session() as s:
        return {d.kind: d for d in s.scalars(select(Deadline).where(Deadline.order_reference == ref))}


def sent_to(smtp: Path, ref: str, marker: str) -> list[EmailMessage]:
    """The messages of this order whose Message-ID holds `marker` (e.g. `.waiting-approval.`)."""
    return [m for m in mails(smtp, ref) if marker in str(m["Message-ID"])]


def clean(messages: list[EmailMessage]) -> None:
    for m in messages:
        text = text_of(m)
        assert not PNR_SHAPE.search(text.replace("19121212-****", "")), text
        assert "Hot mot patienten" not in text and "Risk för men" not in text and "Uppringd" not in text


def announced(ad: Adapters, smtp: Path, ref: str) -> None:
    """Nothing waits unannounced: the stage the order waits in has had its message accepted by the SMTP
    server (the page for the callback, the deciders' email for the others)."""
    o = order_row(ad, ref)
    stage = STAGE_OF_STATUS.get(OrderStatus(o.status))
    if stage is None or OrderStatus(o.status) == OrderStatus.EXECUTING:
        return
    marker = ".paged." if stage == Stage.CALLBACK else f".waiting-{stage.value}."
    with ad.db.session() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference == ref)))
    assert any(marker in r.message_id and r.status == "sent" for r in rows), (o.status, [r.message_id for r in rows])
    assert sent_to(Path(str(smtp)), ref, marker), f"{ref} waits in {stage} and nobody was told"


def housekeeping(ad: Adapters, at: datetime) -> dict[str, int]:
    """One dispatcher round (the app and the housekeeping deployment run it every few seconds)."""
    return escalation.dispatch(ad, at)


def test_the_night(ad: Adapters, clock: FixedClock, api: TestClient, smtp: Path) -> None:
    timeline: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"{clock.now():%H:%M}  {what}")

    # 22:30 the clinician submits an urgent seal and lock.
    out = post(api, "/api/orders", CLINICIAN, body(patient(), urgent=True, callback_phone="070-123 45 67"), wanted=201)
    ref = out["reference"]
    assert datetime.fromisoformat(out["callback_due_at"]) == NIGHT + timedelta(minutes=30)
    assert datetime.fromisoformat(out["due_at"]) == NIGHT + timedelta(hours=4)  # genomförd senast 02:30
    note(f"submitted {ref} (urgent): återuppringning senast 23:00, genomförd senast 02:30")
    [page] = sent_to(smtp, ref, ".paged.")
    assert page["To"] == "beredskap@kalmar.invalid" and "kl. 23.00" in str(page["Subject"])
    note(f"page -> on-call mailbox {page['To']}: {page['Subject']}")
    dl = deadlines(ad, ref)
    assert (dl["callback"].due_at, dl["due"].due_at) == (NIGHT + timedelta(minutes=30), NIGHT + timedelta(hours=4))
    assert housekeeping(ad, clock.now())["announced"] == 0
    announced(ad, smtp, ref)

    # 22:34 on-call calls the orderer back: the order now waits for its harm assessment.
    clock.advance(minutes=4)
    assert decide(api, ad, ref, "callback", ONCALL, {"note": "Uppringd"}) == "awaiting_assessment"
    note("callback recorded by on-call (4 min, in time)")
    [to_assessor] = sent_to(smtp, ref, ".waiting-harm_assessment.")
    assert to_assessor["To"] == "demo-kalmar-assessor@kalmar.invalid"
    assert "menprövning" in str(to_assessor["Subject"]) and "02.30" in str(to_assessor["Subject"])
    note(f"email -> assessor {to_assessor['To']}: {to_assessor['Subject']}")
    dl = deadlines(ad, ref)
    assert dl["callback"].met_at is not None and dl["callback"].fired_at is None
    assert dl["unattended:harm_assessment"].due_at == clock.now() + timedelta(minutes=30)
    assert order_row(ad, ref).due_at == NIGHT + timedelta(hours=4)  # not moved to a working day
    assert housekeeping(ad, clock.now()) == {"paged": 0, "escalated": 0, "announced": 0, "unattended": 0,
                                             "digests": 0}
    announced(ad, smtp, ref)

    # 22:49 the assessor assesses: the bakjour approves out of office hours.
    clock.advance(minutes=15)
    assessment = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 180}
    assert decide(api, ad, ref, "assessment", ASSESSOR, assessment) == "awaiting_approval"
    note("harm assessment recorded by the assessor (restrict, review in 180 days)")
    [to_bakjour] = sent_to(smtp, ref, ".waiting-approval.")
    assert to_bakjour["To"] == "demo-kalmar-bakjour@kalmar.invalid" and "som bakjour" in text_of(to_bakjour)
    note(f"email -> bakjour {to_bakjour['To']}: {to_bakjour['Subject']}")
    dl = deadlines(ad, ref)
    assert dl["unattended:harm_assessment"].met_at is None  # met when the dispatcher looks (below)
    assert dl["unattended:approval"].due_at == clock.now() + timedelta(minutes=30)
    assert housekeeping(ad, clock.now())["announced"] == 0
    announced(ad, smtp, ref)

    # 23:01 the bakjour approves; the simulated 1177 executes at once; confirmations go out.
    clock.advance(minutes=12)
    assert decide(api, ad, ref, "approval", BAKJOUR, {"approved": True, "comment": "Ok"}) == "completed"
    note("approval recorded by the bakjour; executed in 1177 (simulated) at once: completed")
    head = [m for m in mails(smtp, ref) if m["To"] == "demo-kalmar-head@kalmar.invalid"]
    orderer = [m for m in mails(smtp, ref) if m["To"] == "demo-kalmar-clinician@kalmar.invalid"]
    assert len(head) == 1 and len(orderer) == 1
    text = text_of(head[0])
    # Item 7: what was done, who assessed and approved (role and HSA-id), the review date the head answers for.
    assert "1177 journal förseglad" in text and "Inloggningen till 1177 e-tjänster låst" in text
    assert f"Menprövare ({ASSESSOR})" in text and f"Bakjour ({BAKJOUR})" in text
    review = (clock.now().astimezone(UTC) + timedelta(days=180)).astimezone(STOCKHOLM)  # elapsed days
    assert f"Ny menprövning senast {review.day} " in text and "du som verksamhetschef ansvarar" in text, text
    note(f"email -> head of department {head[0]['To']}: {head[0]['Subject']}")
    note(f"email -> orderer {orderer[0]['To']}: {orderer[0]['Subject']}")

    # The dispatcher after the night: nothing to escalate, nothing overdue, every promise met.
    counts = housekeeping(ad, NIGHT + timedelta(hours=5))
    assert counts["escalated"] == 0 and counts["unattended"] == 0 and counts["announced"] == 0
    dl = deadlines(ad, ref)
    assert dl["due"].met_at is not None
    assert dl["unattended:harm_assessment"].fired_at is None and dl["unattended:approval"].fired_at is None
    with ad.db.session() as s:
        assert list(s.scalars(select(Deviation).where(Deviation.order_reference == ref))) == []
    everything = mails(smtp, ref)
    assert sorted(str(m["To"]) for m in everything) == sorted([
        "beredskap@kalmar.invalid", "demo-kalmar-assessor@kalmar.invalid", "demo-kalmar-bakjour@kalmar.invalid",
        "demo-kalmar-head@kalmar.invalid", "demo-kalmar-clinician@kalmar.invalid"])
    clean(everything)
    TIMELINE.parent.mkdir(parents=True, exist_ok=True)
    TIMELINE.write_text("\n".join(timeline) + "\n", encoding="utf-8")


def test_an_assessment_nobody_takes_escalates_exactly_once(ad: Adapters, clock: FixedClock, api: TestClient,
                                                         smtp: Path) -> None:
    ref = post(api, "/api/orders", CLINICIAN, body(patient(), urgent=True, callback_phone="070-123 45 67"), wanted=201)["reference"]
    clock.advance(minutes=2)
    decide(api, ad, ref, "callback", ONCALL, {"note": ""})
    waiting_since = clock.now()
    escalated = 0
    for minute in range(1, 61):  # the dispatcher every minute for an hour; nobody assesses
        got = housekeeping(ad, waiting_since + timedelta(minutes=minute))
        escalated += got["unattended"]
        assert got["escalated"] == 0  # the callback was in time
        if minute < 30:
            assert escalated == 0, minute
    assert escalated == 1
    up = sent_to(smtp, ref, ".unattended-harm_assessment.")
    assert sorted(str(m["To"]) for m in up) == ["jourhavandechef@kalmar.invalid", "supportcenter@kalmar.invalid"]
    clean(up)
    with ad.db.session() as s:
        devs = list(s.scalars(select(Deviation).where(Deviation.order_reference == ref)))
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.order_reference == ref,
                                                       AuditEvent.action == "stage_escalated")))
    assert [d.kind for d in devs] == ["stage_unattended"] and len(rows) == 1
    assert rows[0].at == waiting_since + timedelta(minutes=30)
    # Taken late: the order goes on, the bakjour is told, and nothing escalates a second time.
    clock.set(waiting_since + timedelta(minutes=61))
    assessment = {"harm_found": True, "decision": "restrict", "rationale": "Risk för men", "review_after_days": 180}
    assert decide(api, ad, ref, "assessment", ASSESSOR, assessment) == "awaiting_approval"
    assert len(sent_to(smtp, ref, ".waiting-approval.")) == 1
    assert housekeeping(ad, clock.now() + timedelta(minutes=5))["unattended"] == 0
    with ad.db.session() as s:
        assert notifications.told_about(s, ref, Stage.HARM_ASSESSMENT) and notifications.told_about(s, ref, Stage.APPROVAL)
