"""A writer process for tests/test_audit_chain.py's concurrency test: imports only what writing needs, so a
spawned process starts in a second, not in the seconds the test module's imports take."""

from __future__ import annotations

import os


def write_rows(env: dict[str, str], n: int, name: str) -> None:
    os.environ.update(env)
    from tasks.adapters import audit
    from tasks.adapters.database import session
    for i in range(n):
        with session() as s:
            audit.record(s, actor=name, action="order_read", detail={"i": i})
            if i % 5 == 0:  # now and then two rows in one transaction
                audit.record(s, actor=name, action="order_read", detail={"i": i, "second": True})
