"""Helpers for the end-to-end tests: submit through the service layer, wait for statuses, read the mail sink."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from flows import commands
from tasks.adapters import Adapters
from tasks.steps import orders
from tests.polling import poll_status

PATIENT = "19121212-1212"  # Skatteverket's official test number


def body(order_type: str = "seal_or_lock", region: str = "kalmar", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "order_type": order_type, "initiative": "care", "patient_personal_number": PATIENT,
        "care_unit_hsa_id": f"DEMO-{region.upper()}-UNIT", "region": region, "reason": "Hot mot patienten",
    }
    if order_type in ("seal_or_lock",):
        b["actions"] = ["seal_journal", "lock_login"]
    b.update(extra)
    return b


def submit(ad: Adapters, b: dict[str, Any], actor: str | None = None) -> str:
    # A clinician orders only for their own region's units (issue 16): by default the body's region's clinician.
    out = asyncio.run(commands.submit(ad, b, actor or f"DEMO-{str(b.get('region', 'kalmar')).upper()}-CLINICIAN"))
    assert out.kind == "created", [e.model_dump() for e in out.check.errors]
    assert out.order is not None
    return out.order.reference


def status(ad: Adapters, reference: str) -> str:
    with ad.db.session() as s:
        return orders.get(s, reference).status


def wait_status(ad: Adapters, reference: str, *wanted: str, timeout: float = 90) -> str:
    return poll_status(lambda: status(ad, reference), reference, wanted, timeout, 0.25)


def decide(ad: Adapters, reference: str, stage: str, actor: str, decision: dict[str, Any]) -> None:
    asyncio.run(commands.decide(ad, reference, stage, actor, decision))


def mails(maildir: Path, reference: str) -> list[EmailMessage]:
    out = []
    for p in sorted(maildir.glob("*.eml")):
        m = BytesParser(policy=policy.default).parsebytes(p.read_bytes())
        if m["X-Order-Reference"] == reference:
            out.append(m)  # type: ignore[arg-type]
    return out


def wait_mails(maildir: Path, reference: str, count: int, timeout: float = 60) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    got: list[EmailMessage] = []
    while time.monotonic() < deadline:
        got = mails(maildir, reference)
        if len(got) >= count:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{reference}: {len(got)} mails, wanted {count}")


def text_of(m: EmailMessage) -> str:
    plain = m.get_body(("plain",))
    html = m.get_body(("html",))
    return "".join(part.get_content() for part in (plain, html) if part is not None) + str(m["Subject"])


def luhn(nine: str) -> int:
    total = 0
    for i, ch in enumerate(nine):
        prod = int(ch) * (2 if i % 2 == 0 else 1)
        total += prod // 10 + prod % 10
    return (10 - total % 10) % 10


def personal_number(born: date, serial: int = 239) -> str:
    """A syntactically valid number made here for the test, never copied from anywhere."""
    nine = f"{born:%y%m%d}{serial:03d}"
    return f"{born:%Y%m%d}-{serial:03d}{luhn(nine)}"


def aged(years: int, serial: int = 239) -> str:
    today = datetime.now(UTC).date()
    born = today.replace(year=today.year - years) - timedelta(days=30)
    return personal_number(born, serial)
