"""After the rest of the suite (it sorts just before the leak scan): the session's orders database, written by
every test, the served flows' runs, the app and the dispatchers, some at once, holds one unbroken audit chain.
The tests that break a chain on purpose do it in databases of their own (tests/test_audit_chain.py)."""

from __future__ import annotations

from tasks.adapters import audit_chain
from tasks.adapters.database import Database


def test_the_whole_suites_audit_log_is_one_unbroken_chain(db: Database) -> None:
    report = audit_chain.verify(db, record=False)
    assert report.ok, [p.line() for p in report.problems]
    assert report.rows == report.head_seq
    print(f"audit chain after the suite: {report.rows} rows, intact")
