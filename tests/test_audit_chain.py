"""The tamper-evident audit log (issue 16, part 3): every row hash-chained to the one before it, the database
refusing what it can (REPLACE, rows that do not extend the chain, UPDATE/DELETE), and `restriction-orders
audit verify` naming the first broken row of what it cannot refuse (an owner who drops a trigger first).

Runs on SQLite, and on PostgreSQL when DATABASE_URL is set; each test gets an orders database of its own, so
nothing broken here is seen by the rest of the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from flows.bootstrap import in_process
from forms import cli
from models import audit_chain as fmt
from models.clock import STOCKHOLM
from models.status import OrderStatus
from models.tables import AuditEvent, Order, UTCDateTime
from tasks.adapters import Adapters, audit, audit_chain
from tasks.adapters.database import Database, alembic_config
from tasks.adapters.settings import Settings
from tests.audit_writer import write_rows
from tests.conftest import own_database, prefect_headers

Capture = pytest.CaptureFixture[str]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLINICIAN = "DEMO-KALMAR-CLINICIAN"


@pytest.fixture
def db(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Database]:
    """An orders database of this test's own, migrated and seeded (the session's stays unbroken)."""
    name = "ac" + hashlib.sha1(request.node.name.encode()).hexdigest()[:8]
    yield from own_database(tmp_path_factory, name, first_reference=970000)


def adapters_of(settings: Settings, database: Database) -> Adapters:
    """In-process adapters whose database, and whose settings' database URL (`app-role` without
    `--database-url`), are `database`."""
    return in_process(settings.model_copy(update={"database_url": database.url}), db=database)


@pytest.fixture
def ad(db: Database, settings: Settings) -> Adapters:
    """This test's database's adapters: what the CLI, the app and the health check are given."""
    return adapters_of(settings, db)


def postgres(db: Database) -> bool:
    return db.url.startswith("postgresql")


def owner(db: Database) -> sa.Engine:
    """A plain connection as the database's owner (PostgreSQL) or whoever can open the file (SQLite): none of
    the app's connection settings, e.g. SQLite's recursive_triggers is off."""
    return sa.create_engine(db.url, poolclass=NullPool)


def _stmt(sql: str) -> sa.TextClause:
    stmt = sa.text(sql)
    if ":at" in sql:  # a datetime stored as each database stores the app's
        stmt = stmt.bindparams(sa.bindparam("at", type_=UTCDateTime()))
    return stmt


def run_sql(db: Database, *statements: str, **params: Any) -> None:
    eng = owner(db)
    try:
        with eng.begin() as c:
            for sql in statements:
                c.execute(_stmt(sql), params)
    finally:
        eng.dispose()


def refused(db: Database, sql: str, **params: Any) -> str:
    """Run `sql` as the owner; it must fail. Returns the database's message."""
    eng = owner(db)
    try:
        with eng.connect() as c, pytest.raises(DBAPIError) as err:
            c.execute(_stmt(sql), params)
            c.commit()
        return str(err.value.orig)
    finally:
        eng.dispose()


def write(db: Database, n: int, actor: str = "DEMO-KALMAR-SUPPORT", at: datetime = T0) -> None:
    """`n` audit rows through `tasks.adapters.audit.record`, one transaction each."""
    for i in range(n):
        with db.session() as s:
            audit.record(s, actor=actor, action="order_read", at=at + timedelta(minutes=i), detail={"via": "test", "i": i})


def rows(db: Database) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.query(AuditEvent).order_by(AuditEvent.seq))


def verify_cli(ad: Adapters, capsys: Capture, *args: str) -> tuple[int, str]:
    code = cli.main(["audit", "verify", *args], ad=ad)
    out = capsys.readouterr()
    return code, out.out + out.err


DROP_UPDATE_GUARD = {"sqlite": ["DROP TRIGGER audit_log_no_update"],
                     "postgresql": ["DROP TRIGGER audit_log_no_change ON audit_log"]}
DROP_DELETE_GUARD = {"sqlite": ["DROP TRIGGER audit_log_no_delete"],
                     "postgresql": ["DROP TRIGGER audit_log_no_change ON audit_log"]}
DROP_CHAIN_GUARDS = {"sqlite": ["DROP TRIGGER audit_log_chain_link", "DROP TRIGGER audit_log_chain_advance",
                                "DROP TRIGGER audit_log_no_replace"],
                     "postgresql": ["ALTER TABLE audit_log DISABLE TRIGGER audit_log_chain"]}


def dialect(db: Database) -> str:
    return "postgresql" if postgres(db) else "sqlite"


# --- the format -----------------------------------------------------------------------------------------

def test_the_canonical_form_is_pinned() -> None:
    row: dict[str, Any] = {
        "id": 7, "seq": 3, "at": datetime(2026, 3, 2, 10, 0, 0, 5, tzinfo=UTC), "actor": "DEMO-KALMAR-HEAD",
        "action": "status:approved", "order_reference": "RO-2026-000001", "patient_pnr": "191212121212",
        "from_status": OrderStatus.AWAITING_APPROVAL, "to_status": "executing", "channel": "app",
        "detail": {"b": [1, (2, 3)], "a": {"z": None, "y": "Överförd"}, 5: 1.5}}
    assert fmt.canonical(row) == (
        '["2026-03-02T10:00:00.000005Z","DEMO-KALMAR-HEAD","status:approved","RO-2026-000001","191212121212",'
        '"awaiting_approval","executing","app",{"5":1.5,"a":{"y":"\\u00d6verf\\u00f6rd","z":null},"b":[1,[2,3]]}]')
    content = hashlib.sha256(fmt.canonical(row).encode()).hexdigest()
    assert fmt.content_hash(row) == content
    assert fmt.row_hash(fmt.GENESIS, row) == hashlib.sha256(f"{'0' * 64}\n3\n7\n{content}".encode()).hexdigest()
    # The same instant in another zone, the same detail in another key order: the same row.
    other = row | {"at": row["at"].astimezone(STOCKHOLM),
                   "detail": {5: 1.5, "b": [1, [2, 3]], "a": {"y": "Överförd", "z": None}}}
    assert fmt.canonical(other) == fmt.canonical(row)
    for field in fmt.FIELDS:  # every field counts
        changed = row | {field: {"x": 1} if field == "detail" else 8 if field in ("id", "seq") else
                         row["at"] + timedelta(microseconds=1) if field == "at" else None}
        assert fmt.row_hash(fmt.GENESIS, changed) != fmt.row_hash(fmt.GENESIS, row), field
    with pytest.raises(ValueError):
        fmt.canonical(row | {"at": datetime(2026, 3, 2, 10, 0)})


# --- writing ----------------------------------------------------------------------------------------------

def test_record_chains_every_row_in_one_line(db: Database, ad: Adapters, capsys: Capture) -> None:
    before = len(rows(db))
    write(db, 3)
    with db.session() as s:  # a savepoint rolled back after its row was flushed: the next row takes its place
        try:
            with s.begin_nested():
                audit.record(s, actor="system", action="rolled_back", at=T0)
                s.flush()
                raise RuntimeError
        except RuntimeError:
            pass
    got = rows(db)
    assert [r.seq for r in got] == list(range(1, before + 4)) and "rolled_back" not in {r.action for r in got}
    with db.session() as s:  # several rows in one transaction, in the order they were recorded
        for action in ("submitted", "validated", "stage_planned"):
            audit.record(s, actor="system", action=action, to_status=OrderStatus.SUBMITTED, at=T0)
    got = rows(db)
    assert [r.seq for r in got] == list(range(1, before + 7))
    assert [r.action for r in got[-3:]] == ["submitted", "validated", "stage_planned"]
    assert [r.id for r in got] == sorted(r.id for r in got)
    prev = fmt.GENESIS
    for r in got:
        assert r.prev_hash == prev and r.row_hash == fmt.row_hash(prev, {f: getattr(r, f) for f in fmt.FIELDS})
        prev = r.row_hash
    assert got[-1].to_status == "submitted" and type(got[-1].to_status) is str
    code, out = verify_cli(ad, capsys)
    assert code == 0 and f"{len(got)} rader verifierade" in out, out
    latest = audit_chain.latest(db)
    assert latest is not None and latest.ok and latest.rows == len(got) and latest.head_hash == prev


def test_rows_are_chained_at_commit_and_seen_before_it(db: Database) -> None:
    """The chain's lock is taken at commit: a transaction that recorded a row and goes on working holds no
    lock on the chain, so another transaction records and commits meanwhile (in a thread: it would wait
    for the lock, and this test with it, if the first held it). Reading the audit log inside the transaction
    sees its own rows."""
    import threading
    first = Session(db.engine, expire_on_commit=False)  # open across the other one
    try:
        audit.record(first, actor="A", action="order_read", at=T0)
        first.scalars(sa.select(Order).limit(1)).all()  # other work (an autoflush): not a read of the log
        other = threading.Thread(target=write, args=(db, 1, "B"))
        other.start()
        other.join(20)
        assert not other.is_alive(), "the second transaction waited for the first one's chain lock"
        mine = first.scalars(sa.select(AuditEvent).where(AuditEvent.actor == "A")).all()
        assert len(mine) == 1 and mine[0].seq is not None  # inserted, chained, for this read
    finally:
        first.commit()
        first.close()
    got = rows(db)
    assert [r.actor for r in got[-2:]] == ["B", "A"]  # the chain's order is the order of commits
    assert audit_chain.verify(db, record=False).ok


def test_concurrent_writers_in_several_processes_keep_one_chain(db: Database) -> None:
    before = len(rows(db))
    per, writers = 25, 4
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=write_rows, args=(db.url, per, f"WRITER-{w}")) for w in range(writers)]
    started = time.monotonic()
    for p in procs:
        p.start()
    write(db, 20, actor="WRITER-MAIN", at=datetime.now(UTC))  # and this process at the same time
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    took = time.monotonic() - started
    got = rows(db)
    expected = before + 20 + writers * (per + per // 5)
    assert len(got) == expected and [r.seq for r in got] == list(range(1, expected + 1))
    report = audit_chain.verify(db, record=False)
    assert report.ok, [p.line() for p in report.problems]
    assert report.rows == expected == report.head_seq
    assert len({r.actor for r in got if r.actor.startswith("WRITER")}) == writers + 1
    print(f"{writers + 1} processes wrote {expected - before} chained rows in {took:.1f} s ({dialect(db)})")


# --- what the database refuses --------------------------------------------------------------------------

def _extending_row(db: Database, **overrides: Any) -> dict[str, Any]:
    """Values for a raw INSERT that extends the chain as far as the triggers can tell."""
    last = rows(db)[-1]
    return {"id": last.id + 1, "at": T0, "actor": "FORGER", "action": "status:approved", "order_reference": None,
            "patient_pnr": None, "from_status": None, "to_status": None, "channel": "app", "detail": "{}",
            "seq": last.seq + 1, "prev_hash": last.row_hash, "row_hash": "f" * 64} | overrides


INSERT = ("INSERT INTO audit_log (id, at, actor, action, channel, detail, seq, prev_hash, row_hash) "
          "VALUES (:id, :at, :actor, :action, :channel, :detail, :seq, :prev_hash, :row_hash)")


def test_insert_or_replace_of_an_existing_row_is_refused(db: Database) -> None:
    write(db, 3)
    victim = rows(db)[1]
    before = [(r.id, r.actor, r.row_hash) for r in rows(db)]
    row = _extending_row(db, id=victim.id)
    if postgres(db):
        # The trigger gives every insert the next id: nothing conflicts, nothing is replaced; the row is
        # appended at the end of the chain (with a made-up content hash, which verify reports).
        run_sql(db, INSERT + " ON CONFLICT (id) DO UPDATE SET actor = EXCLUDED.actor", **row)
        assert [(r.id, r.actor, r.row_hash) for r in rows(db)][:len(before)] == before
        assert rows(db)[-1].id > victim.id and rows(db)[-1].seq == len(before) + 1
        return
    replace = INSERT.replace("INSERT", "INSERT OR REPLACE", 1)
    for sql in (replace, INSERT.replace("INSERT", "REPLACE", 1)):
        assert refused(db, sql, **row)  # the id is not above every other: it does not extend the chain
    # Through the app's own connection too (recursive_triggers on: REPLACE's delete hits the DELETE trigger).
    with pytest.raises(DBAPIError), db.session() as s:
        s.execute(_stmt(replace), row)
    # And with the chain's check gone, the REPLACE guard alone: an id, or a position, another row holds.
    run_sql(db, "DROP TRIGGER audit_log_chain_link")
    for taken in (row, _extending_row(db, seq=victim.seq)):
        assert "append-only" in refused(db, replace, **taken)
    assert [(r.id, r.actor, r.row_hash) for r in rows(db)] == before


def test_a_row_that_does_not_extend_the_chain_is_refused_or_put_at_the_end(db: Database) -> None:
    write(db, 2)
    before = rows(db)
    bad_place: tuple[dict[str, Any], ...] = ({"seq": before[-1].seq + 2}, {"prev_hash": "0" * 64}, {"id": 0},
                                             {"seq": 1, "id": before[0].id})
    if postgres(db):
        # The database chains each row itself: whatever id, position or previous hash is sent, it lands at the
        # end, in order. Without a content hash it is refused.
        for i, bad in enumerate(bad_place):
            run_sql(db, INSERT, **_extending_row(db, **bad))
            last = rows(db)[-1]
            assert (last.seq, last.prev_hash) == (len(before) + i + 1, rows(db)[-2].row_hash)
            assert last.id > rows(db)[-2].id
        assert "content hash" in refused(db, INSERT, **_extending_row(db, row_hash=None))
        assert "content hash" in refused(db, INSERT, **_extending_row(db, row_hash="not a hash"))
    else:
        for bad in (*bad_place, {"row_hash": None}, {"seq": None, "prev_hash": None, "row_hash": None}):
            message = refused(db, INSERT, **_extending_row(db, **bad))
            assert "hash chain" in message or "append-only" in message or "null" in message.lower(), (bad, message)
        assert len(rows(db)) == len(before)
    # Nor can the head be moved back, re-hashed or removed.
    count = len(rows(db))
    assert "forward" in refused(db, "UPDATE audit_chain SET last_seq = last_seq - 1")
    assert "forward" in refused(db, "UPDATE audit_chain SET last_hash = :h", h="a" * 64)
    assert refused(db, "DELETE FROM audit_chain")
    audit_chain.verify(db)
    assert refused(db, "DELETE FROM audit_verifications")
    assert refused(db, "UPDATE audit_verifications SET ok = NOT ok")
    assert len(rows(db)) == count


# --- what verify finds ---------------------------------------------------------------------------------------

def test_drop_trigger_then_update_is_found_and_named(db: Database, ad: Adapters, capsys: Capture) -> None:
    write(db, 5)
    assert verify_cli(ad, capsys)[0] == 0
    victim = rows(db)[-3]
    run_sql(db, *DROP_UPDATE_GUARD[dialect(db)], "UPDATE audit_log SET actor = 'FORGER' WHERE id = :i", i=victim.id)
    code, out = verify_cli(ad, capsys)
    assert code == 1, out
    assert re.search(rf"Första brutna rad: rad id {victim.id} \(position {victim.seq}\): content_changed", out), out
    latest = audit_chain.latest(db)
    assert latest is not None and not latest.ok and latest.row_id == victim.id and latest.problem == "content_changed"


def test_a_row_rewritten_with_a_recomputed_hash_is_found(db: Database, ad: Adapters, capsys: Capture) -> None:
    write(db, 5)
    victim = rows(db)[-3]
    forged = {f: getattr(victim, f) for f in fmt.FIELDS} | {"actor": "FORGER"}
    run_sql(db, *DROP_UPDATE_GUARD[dialect(db)], "UPDATE audit_log SET actor = 'FORGER', row_hash = :h WHERE id = :i",
            h=fmt.row_hash(victim.prev_hash, forged), i=victim.id)
    code, out = verify_cli(ad, capsys)
    assert code == 1 and f"rad id {victim.id} (position {victim.seq}): rewritten" in out, out


def test_deleted_rows_are_found(db: Database, ad: Adapters, capsys: Capture) -> None:
    write(db, 6)
    got = rows(db)
    middle, last = got[-4], got[-1]
    run_sql(db, *DROP_DELETE_GUARD[dialect(db)], "DELETE FROM audit_log WHERE id IN (:a, :b)", a=middle.id, b=last.id)
    code, out = verify_cli(ad, capsys)
    after = got[-3]  # the row after the removed one is named
    assert code == 1 and f"Första brutna rad: rad id {after.id} (position {after.seq}): row_missing" in out, out
    assert f"position {last.seq}–{last.seq}" in out  # and the one missing at the end


def _forged(db: Database, **overrides: Any) -> dict[str, Any]:
    """A raw INSERT's values for a row a forger made right, as far as they can: on SQLite the whole chain
    (position, previous hash, row hash over its id), on PostgreSQL, whose trigger chains it, the content hash."""
    row = _extending_row(db, detail={}, **overrides)
    row["row_hash"] = fmt.content_hash(row) if postgres(db) else fmt.row_hash(row["prev_hash"], row)
    return row | {"detail": "{}"}


def test_a_back_dated_insert_is_refused_or_found(db: Database, ad: Adapters, capsys: Capture) -> None:
    """A row dated a month back, with an id that sorts it among the first rows (timelines list by id)."""
    write(db, 5, at=datetime.now(UTC) - timedelta(minutes=10))
    got = rows(db)
    early = got[0].at - timedelta(days=30)
    correct = _forged(db, id=0, at=early)
    if postgres(db):
        # Without a content hash it is refused; with one, the database puts it at the end of the chain, with
        # the next id: not among the old rows. Its date alone gives it away (a warning).
        assert refused(db, INSERT, **_extending_row(db, id=0, at=early, row_hash=None))
        run_sql(db, INSERT, **correct)
        last = rows(db)[-1]
        assert (last.id > got[-1].id, last.seq) == (True, len(got) + 1)
        code, out = verify_cli(ad, capsys)
        assert code == 0 and f"varning: rad id {last.id} (position {last.seq}): back_dated" in out, out
        # With the trigger switched off by the owner, an id among the old rows: found, by that id.
        correct = _extending_row(db, id=0, at=early, detail={}, seq=last.seq + 1, prev_hash=last.row_hash)
        correct["row_hash"] = fmt.row_hash(last.row_hash, correct)
        correct["detail"] = "{}"
    else:
        # Refused without the chain's columns, in a place another row holds, and even extending the chain
        # with a correct hash: its id is not above every other.
        for forged in (_extending_row(db, id=0, at=early, seq=None, prev_hash=None, row_hash=None),
                       _extending_row(db, id=0, at=early, seq=got[1].seq, prev_hash=got[0].row_hash), correct):
            assert refused(db, INSERT, **forged)
        assert len(rows(db)) == len(got)
    run_sql(db, *DROP_CHAIN_GUARDS[dialect(db)], INSERT, **correct)
    code, out = verify_cli(ad, capsys)
    assert code == 1 and f"Första brutna rad: rad id 0 (position {correct['seq']}): row_inserted" in out, out
    assert "content_changed" not in out


def test_a_row_with_a_made_up_hash_is_found(db: Database, ad: Adapters, capsys: Capture) -> None:
    """At the end, in its right place: no database can check the content hash itself."""
    write(db, 3)
    run_sql(db, INSERT, **_extending_row(db, at=T0 - timedelta(days=3)))
    last = rows(db)[-1]
    code, out = verify_cli(ad, capsys)
    assert code == 1 and f"rad id {last.id} (position {last.seq}): content_changed" in out, out


def test_a_back_dated_row_at_the_end_is_a_warning(db: Database, ad: Adapters, capsys: Capture) -> None:
    write(db, 3, at=datetime.now(UTC))
    run_sql(db, INSERT, **_forged(db, at=rows(db)[-1].at - timedelta(days=2)))
    last = rows(db)[-1]
    code, out = verify_cli(ad, capsys)
    # Indistinguishable from a row the app wrote, except by its date: a warning that names it.
    assert code == 0 and f"varning: rad id {last.id} (position {last.seq}): back_dated" in out, out


def test_a_rewritten_history_is_found_by_the_last_verification(db: Database, ad: Adapters, capsys: Capture) -> None:
    """An owner who rewrites a row and re-chains everything after it, head included, leaves a consistent
    chain; the head the previous verification saw is what gives it away."""
    write(db, 5)
    assert verify_cli(ad, capsys)[0] == 0
    got = rows(db)
    target = got[-4]
    guards = DROP_UPDATE_GUARD[dialect(db)] + (["DROP TRIGGER audit_chain_forward_only"] if not postgres(db) else
                                             ["ALTER TABLE audit_chain DISABLE TRIGGER audit_chain_forward_only"])
    statements, params = list(guards), dict[str, Any]()
    prev = target.prev_hash
    for i, r in enumerate(got[got.index(target):]):
        fields = {f: getattr(r, f) for f in fmt.FIELDS} | ({"actor": "FORGER"} if r.id == target.id else {})
        h = fmt.row_hash(prev, fields)
        statements.append(f"UPDATE audit_log SET actor = :a{i}, prev_hash = :p{i}, row_hash = :h{i} WHERE id = :i{i}")
        params |= {f"a{i}": fields["actor"], f"p{i}": prev, f"h{i}": h, f"i{i}": r.id}
        prev = h
    statements.append("UPDATE audit_chain SET last_hash = :head WHERE id = 1")
    run_sql(db, *statements, head=prev, **params)
    with sa.orm.Session(owner(db)) as s:  # consistent in itself
        assert audit_chain.walk(s).ok
    code, out = verify_cli(ad, capsys)
    assert code == 1 and f"rad id {got[-1].id} (position {got[-1].seq}): anchor_mismatch" in out, out


# --- where it is shown ---------------------------------------------------------------------------------------

def test_admin_overview_and_healthz_show_the_last_verification(db: Database, ad: Adapters, capsys: Capture) -> None:
    from forms.app import create_app
    app = create_app(ad)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                     headers={"X-Remote-User": "DEMO-ADMIN"}) as c:
            r = await c.get(path)
            assert r.status_code == 200
            return r

    def overview() -> str:
        return asyncio.run(get("/admin")).text

    def audit_health() -> dict[str, Any]:
        """The `audit` component of /healthz (the others, SMTP and so on, are not this test's)."""
        return dict(asyncio.run(get("/healthz")).json()["audit"])

    health = audit_health()
    assert health["ok"] and "inte verifierad" in health["detail"]
    assert "inte verifierats än" in overview()
    write(db, 3)
    assert verify_cli(ad, capsys)[0] == 0
    health = audit_health()
    assert health["ok"] and "hel" in health["detail"]
    assert re.search(r"Hel: \d+ rader verifierade", overview())
    victim = rows(db)[-2]
    run_sql(db, *DROP_UPDATE_GUARD[dialect(db)], "UPDATE audit_log SET detail = :d WHERE id = :i", d='{"via": "x"}',
            i=victim.id)
    assert verify_cli(ad, capsys)[0] == 1
    health = audit_health()
    assert not health["ok"] and f"rad id {victim.id} (content_changed)" in health["detail"]
    page = overview()
    assert "Kedjan är bruten" in page and f"rad har id {victim.id}" in page and "innehåll har ändrats" in page


# --- the migration -------------------------------------------------------------------------------------------


def test_the_migration_chains_the_rows_already_there(tmp_path: Any) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.db'}"
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("the PostgreSQL run migrates in test_the_migration_chains_the_rows_already_there_pg")
    _migrate_with_rows(url, command, alembic_config(url))


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="DATABASE_URL is not PostgreSQL")
def test_the_migration_chains_the_rows_already_there_pg() -> None:
    from alembic import command

    base = os.environ["DATABASE_URL"].split("?")[0].replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"t_mig_ac_{os.getpid()}"
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{base}?options=-csearch_path%3D{schema}"
        _migrate_with_rows(url, command, alembic_config(url))
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def _migrate_with_rows(url: str, command: Any, cfg: Any) -> None:
    command.upgrade(cfg, "0002a")
    eng = sa.create_engine(url, poolclass=NullPool)
    old = [{"at": T0 + timedelta(minutes=i), "actor": "system", "action": a, "order_reference": "RO-2026-000001",
            "patient_pnr": None, "from_status": None, "to_status": t, "channel": "app", "detail": d}
           for i, (a, t, d) in enumerate([("submitted", "submitted", {}), ("validated", None, {"rules": ["R-1"]}),
                                          ("order_read", None, {"via": "page", "ö": 1.25})])]
    table = sa.Table("audit_log", sa.MetaData(), autoload_with=eng)
    with eng.begin() as c:
        c.execute(table.insert(), old)
    command.upgrade(cfg, "head")
    try:
        with sa.orm.Session(eng) as s:
            got = list(s.query(AuditEvent).order_by(AuditEvent.id))
            assert [(r.seq, r.action) for r in got] == [(1, "submitted"), (2, "validated"), (3, "order_read")]
            report = audit_chain.walk(s)
        assert report.ok and report.rows == 3 and report.head_seq == 3, [p.line() for p in report.problems]
        with sa.orm.Session(eng) as s, s.begin():  # new rows continue the migrated chain
            audit.record(s, actor="system", action="after", at=T0)
        with sa.orm.Session(eng) as s:
            assert audit_chain.walk(s).rows == 4 and audit_chain.walk(s).ok
        command.downgrade(cfg, "0002a")  # and back: the old append-only triggers are there again
        with eng.connect() as c, pytest.raises(DBAPIError):
            c.execute(sa.text("UPDATE audit_log SET actor = 'x'"))
        command.upgrade(cfg, "head")
        with sa.orm.Session(eng) as s:
            assert audit_chain.walk(s).ok
    finally:
        eng.dispose()


# --- PostgreSQL: the app's role --------------------------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="DATABASE_URL is not PostgreSQL")
def test_the_app_role_can_insert_and_read_the_audit_log_and_nothing_more(
        db: Database, ad: Adapters, settings: Settings, capsys: Capture) -> None:
    from forms.app import create_app
    from tests.webapp import body
    role = f"ro_app_t{os.getpid()}"
    assert cli.main(["app-role", role], ad=ad) == 0
    granted = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert granted["audit_log"] == granted["audit_verifications"] == "SELECT, INSERT"
    assert granted["audit_chain"] == "SELECT" and granted["orders"] == "SELECT, INSERT, UPDATE, DELETE"
    app_url = db.url.replace("postgres@", f"{role}@", 1)
    app_db: Database | None = None
    try:
        write(db, 2)
        victim = rows(db)[0]
        app_eng = sa.create_engine(app_url, poolclass=NullPool)
        for sql in ("UPDATE audit_log SET actor = 'FORGER' WHERE id = :i", "DELETE FROM audit_log WHERE id = :i",
                    "TRUNCATE audit_log", "DROP TRIGGER audit_log_no_change ON audit_log",
                    "DROP TRIGGER audit_log_chain ON audit_log", "ALTER TABLE audit_log DISABLE TRIGGER ALL",
                    "DROP TABLE audit_log", "DROP TABLE audit_log CASCADE",
                    "UPDATE audit_chain SET last_seq = 0", "DELETE FROM audit_verifications",
                    "CREATE TRIGGER t BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION append_only()"):
            with app_eng.connect() as c, pytest.raises(DBAPIError) as err:
                c.execute(sa.text(sql), {"i": victim.id})
            assert any(w in str(err.value.orig) for w in ("permission denied", "must be owner")), (sql, err.value)
        app_eng.dispose()
        # The app itself, connected as the role: a submit (its run, in process, writes as the role too), a read
        # and a cancel, each audited; then verify as the role, recorded.
        app_db = Database(app_url)
        as_role = adapters_of(settings, app_db)
        app = create_app(as_role)

        async def use_the_app() -> str:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60,
                                         headers={"X-Remote-User": CLINICIAN}) as c:
                r = await c.post("/api/orders", json=body())
                assert r.status_code == 201, r.text
                ref = str(r.json()["reference"])
                assert (await c.get(f"/api/orders/{ref}")).status_code == 200
                cancel = await c.post(f"/api/orders/{ref}/cancel", json={"reason": "fel patient"})
                assert cancel.status_code == 200, cancel.text
                return ref
        ref = asyncio.run(use_the_app())
        with db.session() as s:
            actions = [e.action for e in s.query(AuditEvent).filter(AuditEvent.order_reference == ref)]
        assert {"submitted", "run_started", "order_read", "cancelled"} <= set(actions), actions
        code, out = verify_cli(as_role, capsys)
        assert code == 0 and "kedja är hel" in out, out
        latest = audit_chain.latest(app_db)
        assert latest is not None and latest.ok and latest.by == "cli"
    finally:
        if app_db is not None:
            app_db.dispose()
        eng = owner(db)
        with eng.begin() as c:
            c.execute(sa.text(f'DROP OWNED BY "{role}"'))
            c.execute(sa.text(f'DROP ROLE "{role}"'))
        eng.dispose()


# --- the scheduled verification -------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_audit_verify_flow_emits_events_and_its_automation_fires(
        db: Database, settings: Settings, prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.audit_verify
    from flows.audit_verify import audit_verify
    from flows.bootstrap import build
    # Prefect calls the flow, so it takes this process's adapters: here those of this test's database, with
    # Prefect's own engine and events (the events go to the session's Prefect server).
    prefect_ad = build(settings.model_copy(update={"database_url": db.url}), db=db)
    monkeypatch.setattr(flows.audit_verify, "process_adapters", lambda: prefect_ad)
    from tasks.adapters.automations_monitoring import AUDIT_CHAIN_BROKEN, ensure_monitoring_automations
    automation = ensure_monitoring_automations(strict=True)[AUDIT_CHAIN_BROKEN]
    write(db, 3)
    good = audit_verify()
    assert good["ok"] and good["rows"] >= 3
    victim = rows(db)[-1]
    run_sql(db, *DROP_UPDATE_GUARD[dialect(db)], "UPDATE audit_log SET actor = 'FORGER' WHERE id = :i", i=victim.id)
    time.sleep(2)  # let the server's trigger cache load the automation
    bad = audit_verify()
    assert not bad["ok"] and bad["row_id"] == victim.id and bad["problem"] == "content_changed"

    def events(name: str) -> list[dict[str, Any]]:
        r = httpx.post(f"{prefect_server}/events/filter", timeout=10, headers=prefect_headers(), json={
            "filter": {"event": {"name": [name]}, "occurred": {"since": (datetime.now(UTC) - timedelta(minutes=10)).isoformat()}},
            "limit": 50})
        r.raise_for_status()
        return list(r.json()["events"])

    deadline = time.monotonic() + 45
    broken: list[dict[str, Any]] = []
    fired = False
    while time.monotonic() < deadline and not (broken and fired):
        broken = [e for e in events(fmt.EVENT_BROKEN) if e["payload"].get("row_id") == victim.id]
        fired = any(e["resource"]["prefect.resource.id"] == f"prefect.automation.{automation}"
                    for e in events("prefect.automation.triggered"))
        time.sleep(1)
    assert broken and broken[0]["payload"]["problem"] == "content_changed"
    assert broken[0]["resource"]["prefect.resource.id"] == fmt.RESOURCE_ID
    assert set(broken[0]["payload"]) == {"rows", "problems", "problem", "row_id", "row_seq"}  # ids and codes only
    assert any(e["payload"].get("head_seq") == good["head_seq"] for e in events(fmt.EVENT_VERIFIED))
    assert fired
