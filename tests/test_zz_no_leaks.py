"""After the end-to-end tests: nothing shaped like a personal identity number outside the orders database.

Scans, at the end of the session:
- the Prefect server's database, SQLite or PostgreSQL (parameters, logs, run inputs, states, events, artifacts);
- the artifacts again through Prefect's API (what the dashboard shows);
- Prefect's result storage, with base64 blobs (pickled results) decoded;
- every log file under the session's temporary directory and pytest's (the Prefect server, the served flows,
  this pytest process that hosts the app, and any `logs/` folder a subprocess writes);
- every email the SMTP server received, parsed: each header decoded, each text and HTML part decoded from
  base64 or quoted-printable, attachment names, PDF attachments as text.
Named `zz` so it runs last. The scanner checks itself (tests at the end) so that it cannot go blind again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from flows import urgent
from tasks.adapters import Adapters
from tests.conftest import _TMP, PROCESS_LOG, FlowServer, prefect_database_rows
from tests.e2e import aged, body, luhn, personal_number, submit, wait_mails, wait_status

# 10 or 12 digits, with or without - or +, not inside a longer run of digits, and not the first groups of a
# UUID (8-4-4-4-12). Letters on both sides (a hex id, base64) are checked in is_personal_number_shaped.
CANDIDATE = re.compile(r"(?<![0-9])(?P<century>\d{2})?(?P<date>\d{6})(?P<sep>[-+]?)(?P<serial>\d{3})(?P<check>\d)"
                       r"(?![0-9])(?!-[0-9A-Fa-f]{4}-)")
# The tables of Prefect's database where what a run handles ends up (Prefect 3).
PREFECT_PLACES = frozenset({"flow_run", "flow_run_state", "flow_run_input", "task_run", "task_run_state", "log",
                            "events", "event_resources", "artifact"})
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HEX_OR_DASH = frozenset("0123456789abcdefABCDEF-")


def in_uuid(text: str, start: int, end: int) -> bool:
    """The digits lie inside a UUID (Prefect's ids: a last group of 12 hex digits can be all decimal)."""
    left, right = start, end
    while left > 0 and text[left - 1] in HEX_OR_DASH:
        left -= 1
    while right < len(text) and text[right] in HEX_OR_DASH:
        right += 1
    return any(u.start() <= start and end <= u.end() for u in UUID.finditer(text, left, right))


def is_personal_number_shaped(m: re.Match[str]) -> bool:
    """A date (day + 60 for a samordningsnummer) and a valid check digit (Luhn over YYMMDDNNN): what
    Skatteverket's numbers all have, and what a UUID fragment or a timestamp passes only by chance. Digits
    with letters glued on both sides are part of a hex id or base64 (decoded and scanned on their own)."""
    text, start, end = m.string, m.start(), m.end()
    if start > 0 and end < len(text) and text[start - 1].isalpha() and text[end].isalpha():
        return False
    if in_uuid(text, start, end):
        return False
    century, yymmdd = m.group("century"), m.group("date")
    if century is not None and century not in ("18", "19", "20"):
        return False
    month, day = int(yymmdd[2:4]), int(yymmdd[4:6])
    if not 1 <= month <= 12 or not (1 <= day <= 31 or 61 <= day <= 91):
        return False
    return luhn(yymmdd + m.group("serial")) == int(m.group("check"))


def findings(text: str, where: str) -> list[str]:
    return [f"{where}: …{text[max(0, m.start() - 40):m.end() + 10]!r}"
            for m in CANDIDATE.finditer(text) if is_personal_number_shaped(m)]


def blob_findings(data: bytes, where: str) -> list[str]:
    """The bytes as text, and every base64 run in them decoded (Prefect stores results as base64 pickles)."""
    out = findings(data.decode("utf-8", "replace"), where)
    for run in BASE64_RUN.findall(data):
        try:
            decoded = base64.b64decode(run + b"=" * (-len(run) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        out += findings(decoded.decode("latin-1"), f"{where} (base64)")
    return out


def pdf_text(data: bytes) -> str:
    done = subprocess.run(["pdftotext", "-", "-"], input=data, capture_output=True, timeout=60)
    return done.stdout.decode("utf-8", "replace")


def email_texts(raw: bytes) -> Iterator[tuple[str, str]]:
    """(part, decoded text) for every header, every text part and every attachment of one message."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    for i, part in enumerate(msg.walk()):
        for name, value in part.items():
            yield f"part {i} header {name}", str(value)
        filename = part.get_filename()
        if filename:
            yield f"part {i} attachment name", filename
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "text":
            yield f"part {i} {part.get_content_type()}", str(part.get_content())
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            text = pdf_text(data) if part.get_content_type() == "application/pdf" else data.decode("latin-1")
            yield f"part {i} {part.get_content_type()}", text


def email_findings(raw: bytes, where: str) -> list[str]:
    return [f for part, text in email_texts(raw) for f in findings(text, f"{where} {part}")]


def log_files(*roots: Path) -> list[Path]:
    return sorted({p for root in roots if root.exists() for p in root.rglob("*.log") if p.is_file()})


def artifact_texts() -> list[tuple[str, str]]:
    """Every artifact through Prefect's API: key, description and data of each version."""
    from prefect.client.orchestration import get_client

    async def read() -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        async with get_client() as client:
            offset = 0
            while True:
                page = await client.read_artifacts(limit=200, offset=offset)
                out += [(f"artifact {a.key or a.id}", f"{a.key} {a.description} {a.data} {a.metadata_}") for a in page]
                if len(page) < 200:
                    return out
                offset += 200
    return asyncio.run(read())


@pytest.mark.e2e
def test_no_personal_numbers_outside_the_orders_database(prefect_ad: Adapters, flow_server: FlowServer, smtp: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    # Whatever else ran in this session: an order with a guardian and a protected patient through every step
    # to its first human one, and an urgent order that pages on-call (an email) and whose run is resumed with
    # the callback, its note naming a patient (free text stays in the orders database), and a line from our
    # own code in this process's log.
    ad = prefect_ad
    ref = submit(ad, body("block_guardian", patient_personal_number=aged(9, 118),
                          guardian_personal_number=aged(39, 224), patient_protected_identity=True))
    paged = submit(ad, body("seal_or_lock", patient_personal_number=aged(51, 336), urgent=True))
    wait_mails(smtp, paged, 1)
    wait_status(ad, paged, "awaiting_callback")
    asyncio.run(urgent.record_callback(ad, paged, "DEMO-KALMAR-ONCALL", f"Uppringd om {aged(51, 336)}"))
    wait_status(ad, paged, "awaiting_assessment")
    wait_status(ad, ref, "awaiting_assessment")
    # A warm worker sends its runs' logs to Prefect in batches (every couple of seconds), not at a process's
    # exit as a run per process did: wait until this order's lines are in before reading everything.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
            t == "log" and (ref in text or ref.lower() in text) for t, text in prefect_database_rows()):
        time.sleep(1)
    logging.getLogger("restriction_orders.leak_scan").info("leak scan of %s starts", ref)
    leaks: list[str] = []
    rows: Counter[str] = Counter()
    mentions: set[str] = set()
    for table, text in prefect_database_rows():
        rows[table] += 1
        if ref in text or ref.lower() in text:
            mentions.add(table)
        leaks += findings(text, f"prefect-db/{table}")
    # The scan read every place where a run keeps data (runs, their states and inputs, task runs, logs, events,
    # artifacts), and in the runs, logs, events and artifacts it saw this test's own order.
    assert {t for t in PREFECT_PLACES if rows[t]} == PREFECT_PLACES, rows
    assert {"flow_run", "log", "events", "artifact"} <= mentions, (mentions, rows)

    artifacts = artifact_texts()
    assert artifacts, "no artifacts read"  # the timelines of the session's finished orders
    for where, text in artifacts:
        leaks += findings(text, where)

    stored = [p for p in Path(os.environ["PREFECT_HOME"]).rglob("*") if p.is_file() and "storage" in p.parts]
    for f in stored:
        leaks += blob_findings(f.read_bytes(), f"result storage {f.name}")

    logs = log_files(_TMP, tmp_path_factory.getbasetemp())
    names = {p.name for p in logs}
    assert {"prefect-server.log", "serve.log", PROCESS_LOG.name} <= names, names
    assert f"leak scan of {ref} starts" in PROCESS_LOG.read_text(errors="replace")  # this process's log is written
    for f in logs:
        leaks += findings(f.read_text(errors="replace"), str(f.relative_to(f.anchor)))

    emails = sorted(smtp.glob("*.eml"))
    assert emails
    for f in emails:
        leaks += email_findings(f.read_bytes(), f.name)
    assert not leaks, f"{len(leaks)} findings:\n" + "\n".join(leaks[:20])


# --- the scanner checks itself ------------------------------------------------------------------------------

def test_the_scanner_finds_every_way_a_number_is_written() -> None:
    for text in ("19121212-1212", "191212121212", "121212-1212", "1212121212", "121212+1212",
                 "parameters {'p': '19121212-1212'}", "pnr=191212121212&x", "(121212+1212)", "\"1212121212\"",
                 "Patient19121212-1212.", "id 1212121212abc"):
        assert findings(text, "x"), text


def test_the_scanner_finds_generated_numbers_and_samordningsnummer_in_every_form() -> None:
    rng = random.Random(20261122)
    for _ in range(300):
        born = date(1900, 1, 1) + timedelta(days=rng.randrange(0, 46000))
        serial = rng.randrange(0, 1000)
        pnr = personal_number(born, serial)                       # YYYYMMDD-NNNC
        nine = f"{born:%y%m}{born.day + 60:02d}{serial:03d}"     # samordningsnummer: day + 60
        samordning = f"{born:%Y%m}{born.day + 60:02d}-{nine[6:]}{luhn(nine)}"
        for number in (pnr, samordning):
            digits = number.replace("-", "")
            for form in (number, digits, number[2:], digits[2:], f"{number[2:8]}+{number[9:]}"):
                assert findings(f"x {form} y", "x"), form


def test_the_scanner_ignores_what_only_looks_like_numbers() -> None:
    assert not findings("run 19121212-1212-4abc-8def-0123456789ab uuid", "x")
    assert not findings("19121212-****", "x")                       # masked
    assert not findings("19121212-1213 and 1212121213", "x")        # wrong check digit
    assert not findings("2026-11-22T10:11:12.123456+00:00 1764000000", "x")
    assert not findings("deadbeef191212121212cafe", "x")             # inside a hex id
    assert not findings("191312121212 and 19121232-1212", "x")      # month 13, day 32
    ten = personal_number(date(1987, 3, 14), 417).replace("-", "")[2:]
    uuid = f"c055595a-7f2d-4025-baae-ec{ten}"                        # a UUID whose last group ends in digits
    assert not findings(f"{uuid} {uuid}-{uuid} 2026-12-02", "x")
    assert findings(f"{uuid} {ten}", "x") and findings(f"{uuid}-{ten[:6]}-{ten[6:]}", "x")  # beside one: found


def test_the_scanner_reads_encoded_email_bodies_headers_and_attachment_names() -> None:
    number = personal_number(date(1987, 3, 14), 417)
    checked = []
    for cte in ("base64", "quoted-printable"):
        msg = EmailMessage()
        msg["Subject"] = "Beställning åäö"
        msg["To"] = "a@example.invalid"
        # Quoted-printable keeps digits as they are but breaks long lines: put the number across a break.
        msg.set_content("a" * 70 + f"{number}, försegling åäö.", cte=cte)
        msg.add_alternative("<p>" + "a" * 64 + f"<b>{number}</b> – åäö</p>", subtype="html", cte=cte)
        raw = msg.as_bytes()
        assert number.encode() not in raw and number.replace("-", "").encode() not in raw  # encoded on the wire
        got = email_findings(raw, "planted")
        assert any("text/plain" in f for f in got) and any("text/html" in f for f in got), got
        checked.append(cte)
    header = EmailMessage()
    header["Subject"] = f"Ärende för {number} – åäö"  # written as an RFC 2047 encoded word
    header.set_content("Ingen text här.")
    assert any("Subject" in f for f in email_findings(header.as_bytes(), "planted"))
    attached = EmailMessage()
    attached.set_content("Bilaga.")
    attached.add_attachment(b"%PDF-1.4", maintype="application", subtype="octet-stream",
                            filename=f"blankett-{number}-å.pdf")
    assert any("attachment name" in f for f in email_findings(attached.as_bytes(), "planted"))
    assert checked == ["base64", "quoted-printable"]


def test_the_scanner_reads_pickled_results_in_base64() -> None:
    import pickle
    number = personal_number(date(1991, 7, 2), 88)
    blob = base64.b64encode(pickle.dumps({"patient": number, "note": "åäö"})).decode()
    stored = f'{{"serializer": {{"type": "pickle"}}, "data": "{blob}"}}'.encode()
    assert number.encode() not in stored
    assert blob_findings(stored, "planted")


def test_this_process_log_is_written() -> None:
    logging.getLogger("tasks.leak_scan_canary").debug("canary line from our own code")
    assert "canary line from our own code" in PROCESS_LOG.read_text(errors="replace")
