"""Faults survived, end to end with the real Prefect server, served flows and SMTP server:

- the serving process and its flow runs killed with SIGKILL (a failpoint kills the whole process group, as
  a power cut would) right after each stage boundary — the order received, a decision recorded, the
  order executed — and started again: the order completes once, each effect applied once, each email
  sent once;
- the SMTP server down while orders finish, then back: every email delivered exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from models.tables import AppliedEffect, AuditEvent, OutboxMessage
from tasks.database import session
from tests.conftest import FlowServer, SmtpSink
from tests.e2e import aged, body, decide, mails, status, submit, wait_mails, wait_status

pytestmark = pytest.mark.e2e
BOUNDARIES = ("after-receive", "after-decision", "after-execute")


def _actions(reference: str, action: str) -> int:
    with session() as s:
        return len(list(s.scalars(select(AuditEvent.id).where(AuditEvent.order_reference == reference,
                                                              AuditEvent.action == action))))


def _survive(flow_server: FlowServer, crashing: FlowServer, point: str) -> None:
    """The failpoint has fired: the group is dead. Start the ordinary server again, as an operator would."""
    crashing.wait_dead(90)
    flow_server.start()


def test_sigkill_at_each_stage_boundary_completes_once(flow_server: FlowServer, smtp: Path,
                                                       tmp_path: Path) -> None:
    flow_server.kill()
    crashing = FlowServer({**flow_server.env, "RO_FAILPOINTS": ",".join(BOUNDARIES),
                           "RO_FAILPOINT_DIR": str(tmp_path)})
    try:
        ref = submit(body("seal_or_lock", patient_personal_number=aged(47, 613)))  # nobody serves it yet
        (tmp_path / f"{ref}.armed").touch()  # only this order crashes; others in flight pass untouched
        crashing.start()
        _survive(flow_server, crashing, "after-receive")           # died once the stages were planned
        assert (tmp_path / f"after-receive-{ref}").exists()
        wait_status(ref, "awaiting_assessment")
        flow_server.kill()
        crashing.start()
        decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
        _survive(flow_server, crashing, "after-decision")          # died with the assessment recorded
        wait_status(ref, "awaiting_approval")
        flow_server.kill()
        crashing.start()
        decide(ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
        _survive(flow_server, crashing, "after-execute")           # died with the 1177 change made
    finally:
        crashing.kill()
        if flow_server.proc is None:
            flow_server.start()
    wait_status(ref, "completed")
    got = wait_mails(smtp, ref, 2)
    time.sleep(3)  # time for a doubled email to show up
    assert len(mails(smtp, ref)) == 2 and {m["Message-ID"] for m in got} == {m["Message-ID"] for m in mails(smtp, ref)}
    with session() as s:
        effects = sorted(e.effect for e in s.scalars(select(AppliedEffect).where(AppliedEffect.order_reference == ref)))
    assert effects == ["lock_login", "seal_journal"]
    assert _actions(ref, "executed") == 1 and _actions(ref, "assessed") == 1 and _actions(ref, "approved") == 1
    assert _actions(ref, "run_started") >= 2  # the crashed run was replaced, with a restart key
    assert status(ref) == "completed"


def test_smtp_down_then_back_delivers_every_email_exactly_once(flow_server: FlowServer, smtp_sink: SmtpSink,
                                                               smtp: Path) -> None:
    refs = [submit(body("seal_or_lock", patient_personal_number=aged(52, 400 + i))) for i in range(2)]
    for ref in refs:
        wait_status(ref, "awaiting_assessment")
        decide(ref, "harm_assessment", "DEMO-KALMAR-ASSESSOR", {"harm_found": True, "decision": "restrict"})
    for ref in refs:
        wait_status(ref, "awaiting_approval")
    smtp_sink.stop()
    try:
        for ref in refs:
            decide(ref, "approval", "DEMO-KALMAR-HEAD", {"approved": True})
        for ref in refs:
            wait_status(ref, "completed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the run tried to send, and the housekeeping loop after it
            with session() as s:
                tried = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference.in_(refs))))
            if len(tried) == 4 and all(m.attempts >= 1 for m in tried):
                break
            time.sleep(0.5)
        assert len(tried) == 4 and all(m.status == "pending" and m.attempts >= 1 for m in tried), \
            [(m.status, m.attempts) for m in tried]
        assert not any(mails(smtp, ref) for ref in refs)
    finally:
        smtp_sink.start()
    for ref in refs:
        wait_mails(smtp, ref, 2, timeout=90)  # the next retry after the backoff
    time.sleep(3)
    assert [len(mails(smtp, ref)) for ref in refs] == [2, 2]
    with session() as s:
        sent = list(s.scalars(select(OutboxMessage).where(OutboxMessage.order_reference.in_(refs))))
    assert all(m.status == "sent" for m in sent)
