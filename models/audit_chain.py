r"""The audit log's hash chain, as pure functions: what a row's hash is made of.

Every row of `audit_log` carries three chain columns besides its content:

- `seq`: its position in the chain, 1, 2, 3, … without gaps, in the order the rows were written;
- `prev_hash`: the `row_hash` of the row at position `seq - 1` (for position 1: GENESIS, 64 zeros);
- `row_hash`, 64 lowercase hexadecimal characters:

      row_hash     = sha256(prev_hash + "\n" + seq + "\n" + id + "\n" + content_hash)
      content_hash = sha256(canonical(row))

  over ASCII text: `seq` and `id` (the row's primary key) in decimal, `canonical(row)` as below. In two
  steps so that PostgreSQL can make the outer hash itself, in the insert trigger that gives the row its id and
  place (migrations/versions/0003_a_audit_chain.py), from the content hash the writer computed; on SQLite
  the writer computes both (tasks/adapters/audit_chain.py). Verification recomputes both from the stored columns.

`canonical(row)` is a JSON array of the row's content, these nine fields in this order:

      [at, actor, action, order_reference, patient_pnr, from_status, to_status, channel, detail]

serialised with `json.dumps(..., ensure_ascii=True, sort_keys=True, separators=(",", ":"))`:

- `at`: a string, the instant in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (four-digit year, always six fraction
  digits: both databases keep microseconds); a naive datetime is refused;
- `actor`, `action`, `order_reference`, `patient_pnr`, `from_status`, `to_status`, `channel`: JSON strings
  (their plain text value; a `str` enum counts as its value), or `null` for None;
- `detail`: the JSON value as the database gives it back: the value is first put through
  `json.loads(json.dumps(value))` (what the JSON column does on the way in and out: tuples become lists,
  non-string keys become strings), then serialised with the rest, so object keys are sorted at every depth.
  Non-ASCII characters are written as `\uXXXX` escapes; floats as Python's shortest round-trip repr.

So any change to any column of a row after it was written changes its hash, and any change to an earlier row
changes what every later row was chained to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
# The scheduled verification's Prefect events (flows/audit_verify.py) and the automation on the first.
EVENT_BROKEN = "audit.chain.broken"
EVENT_VERIFIED = "audit.chain.verified"
RESOURCE_ID = "restriction-orders.audit-chain"
CONTENT_FIELDS = ("at", "actor", "action", "order_reference", "patient_pnr", "from_status", "to_status",
                  "channel", "detail")
STRING_FIELDS = ("actor", "action", "order_reference", "patient_pnr", "from_status", "to_status", "channel")
FIELDS = ("id", "seq", *CONTENT_FIELDS)  # what a row's hash covers


def instant(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def plain(value: str | None) -> str | None:
    """A string's plain text (an enum member's value), as the database stores it."""
    return None if value is None else str.__str__(value)


def stored_json(value: Any) -> Any:
    """The JSON value as it comes back from the database."""
    return json.loads(json.dumps(value))


def canonical(row: Mapping[str, Any], *, read_back: bool = False) -> str:
    """The row's content (a mapping with the CONTENT_FIELDS) in the canonical form above. `read_back`: the
    values were read from the database, so `detail` is in its stored form already (saves a JSON round trip)."""
    values: list[Any] = [instant(row["at"])]
    values += [plain(row[f]) for f in STRING_FIELDS]
    values.append(row["detail"] if read_back else stored_json(row["detail"]))
    return json.dumps(values, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def content_hash(row: Mapping[str, Any], *, read_back: bool = False) -> str:
    return hashlib.sha256(canonical(row, read_back=read_back).encode("ascii")).hexdigest()


def link_hash(prev_hash: str, seq: int, row_id: int, content: str) -> str:
    """The row's hash from the previous one, its place and id, and its content hash (the trigger's formula)."""
    return hashlib.sha256(f"{prev_hash}\n{int(seq)}\n{int(row_id)}\n{content}".encode("ascii")).hexdigest()


def row_hash(prev_hash: str, row: Mapping[str, Any], *, read_back: bool = False) -> str:
    """The hash of a whole row (a mapping with `id`, `seq` and the CONTENT_FIELDS) chained to `prev_hash`."""
    return link_hash(prev_hash, row["seq"], row["id"], content_hash(row, read_back=read_back))
