"""The audit log's hash chain: chaining every new audit row, and walking the chain to verify it.

The format (which fields, in which order, how they are serialised and hashed) is in models/audit_chain.py.

**Writing.** `tasks.adapters.audit.record` hands its row to `add`, which keeps it with the session until the
transaction commits: then everything else is flushed first, and only then is the chain locked and the audit
rows inserted. So the chain's lock is the last lock a transaction takes, held for its last statements and
COMMIT only: never while the transaction goes on to lock other rows (one that another transaction holds
while it waits for the chain would be a deadlock), waits for Prefect or sends mail. A transaction that reads
the audit log after recording (an idempotency check) gets its rows inserted just before that read, so it
sees them. Inside a savepoint a row is added at once, so a rolled-back savepoint takes it along.

`chain_new_events` runs before every flush of a session (`install`, from tasks/adapters/audit.py), so every audit row,
whoever adds it, is chained in the flush's own transaction:

- PostgreSQL: the writer sends the row's content hash as `row_hash`; the insert trigger (SECURITY DEFINER,
  migration 0003a) locks the head row, gives the row the next id and position, the head's hash as
  `prev_hash` and its `row_hash`, and advances the head. The lock is taken inside the INSERT and held to
  COMMIT: nothing of ours runs in between but the rest of the flush.
- SQLite: an update of the head that changes nothing takes the database's write lock at once (a read first
  could see a head that another writer then moves); the writer reads the head, gives each row, in insert
  order, its id (largest + 1, as SQLite would), position, `prev_hash` and `row_hash`. Triggers refuse an
  insert that does not extend the head and advance it.

Either way the lock is held until the transaction ends, so writers in several processes (the app, flow runs,
dispatchers) append one after another and the chain stays one line.

**Verifying.** `verify()` walks every row in chain order in one snapshot (one statement, with the head read
in it) and reports, first broken row first:

- `content_changed`: the row's content no longer gives its stored hash (e.g. DROP TRIGGER, then UPDATE);
- `rewritten`: the row gives its stored hash, but the next row (or the head) was chained to another one: the
  row was changed and its hash recomputed;
- `row_missing`: positions are missing before this row, or at the end (deleted rows);
- `row_inserted`: a row that is not in the chain (no position, a position another row holds, beyond the
  head, or an id lower than the row before it): written around `tasks.adapters.audit.record`, e.g. a back-dated row
  inserted with SQL;
- `anchor_mismatch`: the row a previous successful verification saw as the head has another hash now: the
  history up to there was rewritten (and re-chained) since.

A row dated more than BACK_DATED before the row chained before it is a warning (`back_dated`), not a
break. What no walk can tell: a row appended at the end, with a correct hash, by someone who can write to
the database as the app does (on PostgreSQL, the app role): that is what the app role is for. Keep its
credentials to the app and the workers.

Each walk is recorded in `audit_verifications` (when, outcome, first broken row, the head it saw); the admin
overview and `/healthz` show the latest. Messages carry ids, positions and codes only, never row content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, event, inspect, select, text
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from models.audit_chain import CONTENT_FIELDS, FIELDS, GENESIS, STRING_FIELDS, content_hash, plain, row_hash
from models.tables import AuditChainHead, AuditEvent, AuditVerification
from tasks.adapters.database import Database

MAX_LISTED = 50  # problems kept in a report; the count goes on
# A row dated this much before the row chained before it is reported as a warning (`back_dated`): a row is
# dated when it is recorded and chained when its transaction commits, so legitimate rows are out of order
# by a transaction's length (seconds), not hours.
# A warning, not a break: tests and reruns with an injected clock write such rows on purpose.
BACK_DATED = timedelta(hours=1)


# --- writing ------------------------------------------------------------------------------------------

def _take_head(conn: Connection, n: int) -> tuple[int, str, list[int]]:
    """SQLite: take the database's write lock (an update of the head that changes nothing: a read first could
    see a head another writer then moves), then read the head and the next `n` ids (largest + 1, as SQLite)."""
    conn.execute(text("UPDATE audit_chain SET last_seq = last_seq WHERE id = 1"))
    row = conn.execute(text("SELECT last_seq, last_hash, (SELECT COALESCE(MAX(id), 0) FROM audit_log) "
                            "FROM audit_chain WHERE id = 1")).one()
    return int(row[0]), str(row[1]), list(range(int(row[2]) + 1, int(row[2]) + n + 1))


def chain_new_events(session: Session, flush_context: Any = None, instances: Any = None) -> None:
    """Session `before_flush`: chain the new audit rows of this flush (see the module's docstring)."""
    # Every pending row, each flush: a row whose earlier flush was rolled back gets a fresh place.
    new = [o for o in session.new if isinstance(o, AuditEvent)]
    if not new:
        return
    if any(not isinstance(e.at, datetime) or e.at.tzinfo is None for e in new):
        return  # the column type refuses a naive or missing time with its own error; nothing to chain
    for ev in new:
        for name in STRING_FIELDS:  # what is stored is the plain text (an enum's value): hash that
            value = getattr(ev, name)
            if value is not None and type(value) is not str:
                setattr(ev, name, plain(value))
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        # The insert trigger gives each row its id, place and hash, from the content hash sent as row_hash,
        # under the head's row lock: no statement of ours runs while the chain is locked but the insert.
        for ev in new:
            ev.id, ev.seq, ev.prev_hash = None, None, None  # type: ignore[assignment]
            ev.row_hash = content_hash({f: getattr(ev, f) for f in CONTENT_FIELDS})
        session.info.setdefault(INSERTED, []).extend(new)
        return
    new.sort(key=lambda o: inspect(o).insert_order or 0)  # the order the unit of work inserts them in
    seq, prev, ids = _take_head(conn, len(new))
    for ev, new_id in zip(new, ids, strict=True):
        ev.id = new_id
        seq += 1
        ev.seq, ev.prev_hash = seq, prev
        ev.row_hash = prev = row_hash(prev, {f: getattr(ev, f) for f in FIELDS})


INSERTED = "audit_chain.inserted"


def _refresh_chained(session: Session, flush_context: Any) -> None:
    """After a flush on PostgreSQL: the trigger changed what the objects say (position, hashes)."""
    for ev in session.info.pop(INSERTED, []):
        if ev in session:
            session.expire(ev, ["seq", "prev_hash", "row_hash"])


PENDING = "audit_chain.pending"


def add(session: Session, ev: AuditEvent) -> None:
    """Add an audit row to the session's transaction: inserted, chained, when it commits (see above)."""
    if session.in_nested_transaction():
        session.add(ev)
        return
    if not session.in_transaction():
        session.begin()  # so the row belongs to a transaction, and goes when it is rolled back
    session.info.setdefault(PENDING, []).append(ev)


def _insert_pending(session: Session) -> None:
    pending = session.info.pop(PENDING, None)
    if pending:
        session.add_all(pending)
        session.flush()


def _before_commit(session: Session) -> None:
    if session.info.get(PENDING):
        session.flush()  # the transaction's other writes (their row locks, version checks) before the chain's lock
        _insert_pending(session)


def _before_reading_the_log(state: ORMExecuteState) -> None:
    if (state.session.info.get(PENDING) and state.is_select
            and any(m.class_ is AuditEvent for m in state.all_mappers)):
        _insert_pending(state.session)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (nothing left) or rolled back (the rows go with it)
        session.info.pop(PENDING, None)
        session.info.pop(INSERTED, None)


def install() -> None:
    """Chain audit rows in every session of this process (idempotent)."""
    for name, fn in (("before_flush", chain_new_events), ("after_flush_postexec", _refresh_chained),
                     ("before_commit", _before_commit), ("do_orm_execute", _before_reading_the_log),
                     ("after_transaction_end", _after_transaction_end)):
        if not event.contains(Session, name, fn):
            event.listen(Session, name, fn)


# --- verifying ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    code: str
    row_id: int | None
    seq: int | None
    message: str  # Swedish, ids and positions only

    def line(self) -> str:
        where = f"rad id {self.row_id}" if self.row_id is not None else "slutet"
        pos = f" (position {self.seq})" if self.seq is not None else ""
        return f"{where}{pos}: {self.code}: {self.message}"


@dataclass
class Report:
    at: datetime
    rows: int = 0                 # chained rows walked
    head_seq: int = 0             # the head the database names (audit_chain)
    head_hash: str = GENESIS
    last_seq: int = 0             # the last chained row walked
    last_hash: str = GENESIS
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    anchor: tuple[int, str] | None = None
    warnings: list[Problem] = field(default_factory=list)  # back-dated rows: see BACK_DATED

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _walk_rows(s: Session) -> Any:
    head_seq = select(AuditChainHead.last_seq).where(AuditChainHead.id == 1).scalar_subquery()
    head_hash = select(AuditChainHead.last_hash).where(AuditChainHead.id == 1).scalar_subquery()
    cols = [getattr(AuditEvent, f) for f in FIELDS] + [AuditEvent.prev_hash, AuditEvent.row_hash]
    # One statement, so the rows and the head come from one snapshot while writers go on appending.
    stmt = (select(*cols, head_seq.label("head_seq"), head_hash.label("head_hash"))
            .order_by(AuditEvent.seq, AuditEvent.id).execution_options(yield_per=2000))
    return s.execute(stmt)


class _Problems:
    """Problems as the walk finds them: all counted, the first few hundred kept (walk order is nearly chain
    order; sorted at the end)."""

    def __init__(self) -> None:
        self.found: list[Problem] = []
        self.count = 0

    def note(self, code: str, row_id: int | None, seq: int | None, message: str) -> None:
        self.count += 1
        if len(self.found) < 4 * MAX_LISTED:
            self.found.append(Problem(code, row_id, seq, message))

    def first(self) -> list[Problem]:
        return sorted(self.found, key=lambda p: (p.seq if p.seq is not None else math.inf, p.row_id or 0))[:MAX_LISTED]


@dataclass
class _Walk:
    """The walk's state, row by row in chain order."""
    report: Report
    problems: _Problems
    anchor: tuple[int, str] | None
    head: tuple[int, str] | None = None
    expected: int = 1
    prev_hash: str = GENESIS
    prev: Any = None          # the previous chained row
    beyond_head: Any = None   # the first row past the head
    anchor_row: Any = None

    def row(self, r: Any) -> None:
        if self.head is None:
            self.head = (int(r.head_seq), str(r.head_hash))
        if not self._chained(r):
            return
        self.report.rows += 1
        self._order(r)
        self._links(r)
        if r.seq > self.head[0] and self.beyond_head is None:
            self.beyond_head = r
        if self.anchor is not None and r.seq == self.anchor[0]:
            self.anchor_row = r
        self.prev, self.prev_hash, self.expected = r, r.row_hash, r.seq + 1

    def _chained(self, r: Any) -> bool:
        """Whether the row has a place in the chain after the previous one (else it is noted as inserted)."""
        if r.seq is None or r.prev_hash is None or r.row_hash is None:
            self.problems.note("row_inserted", r.id, None, "raden saknar plats i kedjan (skriven förbi granskningsloggen)")
            return False
        if r.seq < self.expected:
            self.problems.note("row_inserted", r.id, r.seq,
                               f"raden gör anspråk på position {r.seq}, som rad id {self.prev.id} har")
            return False
        return True

    def _order(self, r: Any) -> None:
        prev = self.prev
        if prev is not None and r.id <= prev.id:
            # Writers take ids in chain order under the lock: a lower id is a row slipped in with one chosen
            # to sort it among older rows (timelines list by id).
            self.problems.note("row_inserted", r.id, r.seq,
                               f"raden har lägre id än rad id {prev.id} före den i kedjan (infogad bakåt)")
        elif prev is not None and r.at < prev.at - BACK_DATED and len(self.report.warnings) < MAX_LISTED:
            self.report.warnings.append(Problem("back_dated", r.id, r.seq,
                                                f"raden är daterad {prev.at - r.at} före raden före den i kedjan"))

    def _links(self, r: Any) -> None:
        prev, note = self.prev, self.problems.note
        if r.seq > self.expected:
            note("row_missing", r.id, r.seq,
                 f"{r.seq - self.expected} rad(er) saknas före raden (position {self.expected}–{r.seq - 1})")
        elif r.prev_hash != self.prev_hash and prev is None:
            note("content_changed", r.id, r.seq, "första raden börjar inte från kedjans början")
        elif r.prev_hash != self.prev_hash:
            note("rewritten", prev.id, prev.seq, f"raden ändrades och fick ny hash: rad id {r.id} kedjades till en annan")
        if row_hash(r.prev_hash, r._mapping, read_back=True) != r.row_hash:
            note("content_changed", r.id, r.seq, "radens innehåll ger inte längre dess lagrade hash")


def walk(s: Session, anchor: tuple[int, str] | None = None, now: datetime | None = None) -> Report:
    """Walk the chain in `s` (read only). `anchor`: (position, hash) a previous good walk saw as the head."""
    report = Report(at=now or datetime.now(UTC), anchor=anchor)
    problems = _Problems()
    w = _Walk(report, problems, anchor)
    for r in _walk_rows(s):
        w.row(r)
    head = w.head
    if head is None:  # no rows at all
        row = s.execute(select(AuditChainHead.last_seq, AuditChainHead.last_hash).where(AuditChainHead.id == 1)).one()
        head = (int(row[0]), str(row[1]))
    report.head_seq, report.head_hash = head
    report.last_seq, report.last_hash = (w.prev.seq, w.prev.row_hash) if w.prev is not None else (0, GENESIS)
    _check_the_end(report, problems, w.prev, w.beyond_head, w.anchor_row)
    report.problems, report.problem_count = problems.first(), problems.count
    return report


def _check_the_end(report: Report, problems: _Problems, last: Any, beyond_head: Any, anchor_row: Any) -> None:
    """The head against the last row, and the anchor (the head a previous good walk saw) against its row."""
    last_id = last.id if last is not None else None
    if beyond_head is not None:
        problems.note("row_inserted", beyond_head.id, beyond_head.seq,
                      f"raden ligger efter kedjans huvud (position {report.head_seq})")
    elif report.head_seq > report.last_seq:
        problems.note("row_missing", last_id, report.last_seq or None,
                      f"{report.head_seq - report.last_seq} rad(er) saknas i slutet "
                      f"(position {report.last_seq + 1}–{report.head_seq})")
    elif report.head_hash != report.last_hash and last is not None:
        problems.note("rewritten", last.id, last.seq,
                      "sista raden ändrades och fick ny hash: huvudet kedjades till en annan")
    anchor = report.anchor
    if anchor is None or anchor[0] == 0:
        return
    if anchor[0] > report.last_seq:
        problems.note("row_missing", last_id, report.last_seq or None,
                      f"en tidigare verifiering såg {anchor[0]} rader, nu finns {report.last_seq}")
    elif anchor_row is None or anchor_row.row_hash != anchor[1]:
        problems.note("anchor_mismatch", anchor_row.id if anchor_row is not None else None, anchor[0],
                      "raden har en annan hash än när kedjan senast verifierades: historiken är omskriven")


def last_verification(s: Session) -> AuditVerification | None:
    return s.scalars(select(AuditVerification).order_by(AuditVerification.id.desc()).limit(1)).first()


def last_anchor(s: Session) -> tuple[int, str] | None:
    v = s.scalars(select(AuditVerification).where(AuditVerification.ok.is_(True))
                  .order_by(AuditVerification.id.desc()).limit(1)).first()
    return (v.head_seq, v.head_hash) if v is not None else None


def _record(s: Session, report: Report, by: str) -> AuditVerification:
    first = report.first
    v = AuditVerification(at=report.at, ok=report.ok, rows=report.rows, head_seq=report.last_seq,
                          head_hash=report.last_hash, problems=report.problem_count,
                          problem=first.code if first else None, row_id=first.row_id if first else None,
                          row_seq=first.seq if first else None, detail=first.line()[:500] if first else None, by=by)
    s.add(v)
    return v


def save(db: Database, report: Report, by: str = "cli") -> None:
    """Store the walk's outcome in `audit_verifications` of the orders database."""
    with Session(db.engine) as s, s.begin():
        _record(s, report, by)


def verify(db: Database, *, by: str = "cli", record: bool = True, now: datetime | None = None) -> Report:
    """Walk the chain of the orders database and, with `record`, store the outcome there."""
    with Session(db.engine) as s:
        report = walk(s, last_anchor(s), now)
    if record:
        save(db, report, by)
    return report


def latest(db: Database) -> AuditVerification | None:
    """The latest verification, for the admin overview and /healthz."""
    with Session(db.engine, expire_on_commit=False) as s:
        return last_verification(s)
