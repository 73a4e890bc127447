"""After the end-to-end tests: nothing shaped like a personal identity number outside the orders database.

Scans the Prefect server's database, SQLite or PostgreSQL (parameters, logs, run inputs, states, events, artifacts), Prefect's
result storage, the logs of every process and every email sent. Named `zz` so it runs last.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import pytest

from models import personnummer
from tests.conftest import _TMP, FlowServer, prefect_database_rows
from tests.e2e import aged, body, submit, wait_status

pytestmark = pytest.mark.e2e
CANDIDATE = re.compile(r"(?<![0-9A-Za-z])(\d{6}|\d{8})([-+]?)(\d{4})(?![0-9A-Za-z])(?!-[0-9a-f])")


def findings(text: str, where: str) -> list[str]:
    out = []
    for m in CANDIDATE.finditer(text):
        try:
            personnummer.parse(m.group(0), date.today())
        except personnummer.InvalidPersonalNumber:
            continue
        out.append(f"{where}: …{text[max(0, m.start() - 40):m.end() + 10]!r}")
    return out


def test_no_personal_numbers_outside_the_orders_database(flow_server: FlowServer, smtp: Path) -> None:
    # Make sure there is at least one order with a guardian and a protected patient in this session.
    ref = submit(body("block_guardian", patient_personal_number=aged(9, 118), guardian_personal_number=aged(39, 224),
                      patient_protected_identity=True))
    wait_status(ref, "awaiting_assessment")
    prefect_home = Path(os.environ["PREFECT_HOME"])
    leaks: list[str] = []
    rows = 0
    for table, text in prefect_database_rows():
        rows += 1
        leaks += findings(text, f"prefect-db/{table}")
    assert rows > 1000, rows  # the scan saw the session's runs, states, logs and events
    for f in [*prefect_home.rglob("storage/*"), *_TMP.glob("*.log"), *smtp.glob("*.eml")]:
        if f.is_file():
            leaks += findings(f.read_text(errors="replace"), f.name)
    assert not leaks, "\n".join(leaks[:20])


def test_the_scanner_finds_a_number() -> None:
    assert findings("parameters {'p': '19121212-1212'}", "x")
    assert findings("121212+1212 and 191212121212", "x")
    assert not findings("run 19121212-1212-4abc-8def uuid", "x")
    assert not findings("19121212-****", "x")
