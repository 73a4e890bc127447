"""The orders database failing under a request: a clear 503 and nothing half-written; and the outbox's
one at-least-once window (a sender killed after the SMTP server accepted a message).

Two faults: the database cannot be reached at all, and the database fails in the middle of the submit's
transaction (after the order row and its reference were written, before its audit row). Both answer 503
with `database_unavailable`; afterwards the next order gets the next reference, so nothing of the failed
one was kept (not even its number).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from flows.bootstrap import in_process
from models.tables import AuditEvent, Order, OutboxMessage, ReferenceCounter
from tasks.adapters import Adapters, audit, mail
from tasks.adapters.database import Database
from tasks.adapters.settings import Settings
from tests.conftest import ROOT
from tests.e2e import mails, wait_mails
from tests.webapp import body

CLINICIAN = {"X-Remote-User": "DEMO-KALMAR-CLINICIAN"}


def _client(ad: Adapters) -> TestClient:
    from forms.app import create_app
    return TestClient(create_app(ad), client=("127.0.0.1", 40000), raise_server_exceptions=False)


@pytest.fixture()
def app(ad: Adapters) -> Iterator[TestClient]:
    """The app with the in-process engine: only the database is under test, no Prefect server is needed."""
    with _client(ad) as c:
        yield c


def _rows(ad: Adapters) -> tuple[int, int, int, int]:
    with ad.db.session() as s:
        return (int(s.scalar(select(func.count()).select_from(Order)) or 0),
                int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0),
                int(s.scalar(select(func.count()).select_from(OutboxMessage)) or 0),
                int(s.scalar(select(func.sum(ReferenceCounter.last))) or 0))


def _last_number(reference: str) -> int:
    return int(reference.rsplit("-", 1)[1])


def test_database_unreachable_at_submit_answers_503(ad: Adapters, settings: Settings) -> None:
    before = _rows(ad)
    unreachable = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    try:
        with _client(in_process(settings, db=unreachable)) as down:
            r = down.post("/api/orders", json=body(), headers=CLINICIAN)
            page = down.get("/bestallningar", headers=CLINICIAN)
    finally:
        unreachable.dispose()
    assert r.status_code == 503, r.text
    assert r.json()["errors"][0]["code"] == "database_unavailable" and r.headers["Retry-After"] == "30"
    assert "Inget sparades" in r.json()["errors"][0]["message"]
    assert page.status_code == 503 and "pappersblanketten" in page.text  # the page says what to do instead
    assert _rows(ad) == before


def test_database_failing_mid_submit_keeps_nothing(ad: Adapters, app: TestClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = app.post("/api/orders", json=body(), headers=CLINICIAN)
    assert first.status_code == 201, first.text
    before = _rows(ad)
    real = audit.record

    def connection_lost(s: Any, *, action: str, **kw: Any) -> Any:
        if action == "submitted":
            s.flush()  # the order row and its reference are written by now
            raise OperationalError("INSERT INTO audit_events", {}, Exception("server closed the connection"))
        return real(s, action=action, **kw)
    monkeypatch.setattr(audit, "record", connection_lost)
    failed = app.post("/api/orders", json=body(urgent=True), headers=CLINICIAN)
    monkeypatch.setattr(audit, "record", real)
    assert failed.status_code == 503 and failed.json()["errors"][0]["code"] == "database_unavailable"
    assert _rows(ad) == before  # no order, no audit row, no page queued, no reference used

    again = app.post("/api/orders", json=body(), headers=CLINICIAN)
    assert again.status_code == 201
    assert _last_number(again.json()["reference"]) == _last_number(first.json()["reference"]) + 1


# --- SMTP: the at-least-once window ----------------------------------------------------------------------

def test_a_sender_killed_between_smtp_accept_and_mark_sends_again_with_the_same_message_id(
        ad: Adapters, smtp: Path, tmp_path: Path) -> None:
    """The one window the outbox cannot close: the SMTP server has accepted a message and the sender dies
    before it records that. The lease runs out and the message is sent again, with the same Message-ID,
    so the receiving side can drop the copy. A sender killed by a failpoint (`after-smtp-accept`) shows it."""
    ref = f"RO-2031-{uuid.uuid4().int % 10**6:06d}"  # the outbox alone is under test: no order, no run
    later = datetime.now(UTC) + timedelta(days=3)    # out of reach of any housekeeping loop running meanwhile
    mid = mail.message_id(ref, "completed", "head")
    with ad.db.session() as s:
        s.add(OutboxMessage(message_id=mid, order_reference=ref, event="completed",
                            recipient="demo-kalmar-head@kalmar.invalid", subject=f"Beställning {ref} är genomförd",
                            body_text="Genomförd: försegling och låsning.", body_html="<p>Genomförd.</p>",
                            status="pending", attempts=0, created_at=later, next_attempt_at=later))
    (tmp_path / f"{ref}.armed").write_text("after-smtp-accept\n")
    sender = subprocess.run(
        [sys.executable, "-c", "import sys; from datetime import datetime; from flows.bootstrap import build; "
                               "build().mail.deliver(sys.argv[1], now=datetime.fromisoformat(sys.argv[2]))",
         ref, later.isoformat()],
        cwd=ROOT, env={**os.environ, "RO_FAILPOINTS": "after-smtp-accept", "RO_FAILPOINT_DIR": str(tmp_path),
                       "PYTHONPATH": str(ROOT)},
        start_new_session=True, capture_output=True, timeout=120)  # its own group: the failpoint kills only it
    assert sender.returncode == -signal.SIGKILL, sender.stderr.decode(errors="replace")[-2000:]
    first = wait_mails(smtp, ref, 1)
    row = _outbox(ad, mid)
    assert row.status == "sending" and row.attempts == 0  # accepted, but the outbox never heard of it

    assert ad.mail.deliver(ref, now=later + mail.LEASE / 2) == (0, 0)  # nothing while the lease holds
    assert ad.mail.deliver(ref, now=later + mail.LEASE + timedelta(seconds=1)) == (1, 0)
    both = wait_mails(smtp, ref, 2)
    assert len(both) == 2 and [m["Message-ID"] for m in both] == [mid, mid] == [first[0]["Message-ID"], mid]
    row = _outbox(ad, mid)
    assert row.status == "sent" and row.attempts == 1
    assert ad.mail.deliver(ref, now=later + 2 * mail.LEASE) == (0, 0)  # and never a third
    assert len(mails(smtp, ref)) == 2


def _outbox(ad: Adapters, message_id: str) -> OutboxMessage:
    with ad.db.session() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.message_id == message_id))
        assert row is not None
        s.expunge(row)
        return row
