"""A writer process for tests/test_audit_chain.py's concurrency test: imports only what writing needs, so a
spawned process starts in a second, not in the seconds the test module's imports take."""

from __future__ import annotations


def write_rows(url: str, n: int, name: str) -> None:
    """`n` audited transactions (now and then two rows in one) into the orders database at `url`."""
    from tasks.adapters import audit
    from tasks.adapters.database import Database
    db = Database(url)
    try:
        for i in range(n):
            with db.session() as s:
                audit.record(s, actor=name, action="order_read", detail={"i": i})
                if i % 5 == 0:  # now and then two rows in one transaction
                    audit.record(s, actor=name, action="order_read", detail={"i": i, "second": True})
    finally:
        db.dispose()
