"""audit log hash chain

Every audit row gets `seq`, `prev_hash` and `row_hash` (models/audit_chain.py); rows that exist already are
chained here, in id order. The chain head `audit_chain` (one row) and the log of verifications
`audit_verifications` are new. The database keeps the chain linear and the log append-only:

SQLite
- UPDATE and DELETE on audit_log refused (as before, re-created after the table is rebuilt);
- an INSERT whose id or seq exists already is refused: `INSERT OR REPLACE` used to replace a row, because
  REPLACE deletes the old row without firing delete triggers (the app's connections also set
  `PRAGMA recursive_triggers = ON`, so there a REPLACE's delete fires the DELETE trigger too);
- an INSERT that does not extend the head (seq = head + 1, prev_hash = the head's hash, an id above every
  other: no back-dated row slipped in among the old ones) is refused, and each insert advances the head;
  the head cannot be deleted, rewound or re-hashed in place.

PostgreSQL (the migration runs as the owner; the app role has INSERT and SELECT only: tasks/adapters/db_roles.py)
- UPDATE, DELETE and TRUNCATE on audit_log refused (from 0001);
- a BEFORE INSERT trigger (SECURITY DEFINER, so the app role needs no UPDATE on the head) chains every row
  itself: it locks the head, gives the row the next id, its position and previous hash, makes its hash from
  the content hash the writer sent, and advances the head. Whatever id, position or hash a writer sends, the
  row lands at the end of the chain (no back-dated row among the old ones);
- the head cannot be deleted, truncated, rewound or re-hashed in place; audit_verifications is append-only.

Nothing here can stop the owner of the database or of the SQLite file; `restriction-orders audit verify`
finds what they changed.
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

from models.audit_chain import GENESIS, STRING_FIELDS, row_hash
from models.tables import UTCDateTime

revision = '0003a'
down_revision = '0002a'

log = sa.table('audit_log', sa.column('id', sa.BigInteger), sa.column('at', UTCDateTime()),
               *(sa.column(f, sa.String) for f in STRING_FIELDS), sa.column('detail', sa.JSON),
               sa.column('seq', sa.BigInteger), sa.column('prev_hash', sa.String), sa.column('row_hash', sa.String))
head = sa.table('audit_chain', sa.column('id', sa.Integer), sa.column('last_seq', sa.BigInteger),
                sa.column('last_hash', sa.String))

SQLITE_LOG_TRIGGERS = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    # REPLACE (INSERT OR REPLACE, REPLACE INTO) deletes the row it conflicts with and fires no delete trigger
    # unless recursive_triggers is on: refuse any insert whose id or position is taken, before the conflict.
    "CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log "
    "WHEN EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id) OR EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq) "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: this id or position exists'); END",
    "CREATE TRIGGER audit_log_chain_link BEFORE INSERT ON audit_log "
    "WHEN NEW.seq IS NOT (SELECT last_seq + 1 FROM audit_chain WHERE id = 1) "
    "OR NEW.prev_hash IS NOT (SELECT last_hash FROM audit_chain WHERE id = 1) "
    "OR NEW.row_hash IS NULL OR length(NEW.row_hash) <> 64 "
    "OR NEW.id <= (SELECT COALESCE(MAX(id), 0) FROM audit_log) "
    "BEGIN SELECT RAISE(ABORT, 'audit_log: the row does not extend the hash chain'); END",
    "CREATE TRIGGER audit_log_chain_advance AFTER INSERT ON audit_log "
    "BEGIN UPDATE audit_chain SET last_seq = NEW.seq, last_hash = NEW.row_hash WHERE id = 1; END",
]
SQLITE_OTHER_TRIGGERS = [
    "CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain "
    "BEGIN SELECT RAISE(ABORT, 'audit_chain: the head stays'); END",
    # Writers lock the head with an update that changes nothing; the insert trigger advances it by one.
    "CREATE TRIGGER audit_chain_forward_only BEFORE UPDATE ON audit_chain "
    "WHEN NOT ((NEW.last_seq = OLD.last_seq AND NEW.last_hash = OLD.last_hash) OR NEW.last_seq = OLD.last_seq + 1) "
    "OR NEW.id IS NOT OLD.id "
    "BEGIN SELECT RAISE(ABORT, 'audit_chain: the head only moves forward'); END",
    "CREATE TRIGGER audit_verifications_no_update BEFORE UPDATE ON audit_verifications "
    "BEGIN SELECT RAISE(ABORT, 'audit_verifications is append-only'); END",
    "CREATE TRIGGER audit_verifications_no_delete BEFORE DELETE ON audit_verifications "
    "BEGIN SELECT RAISE(ABORT, 'audit_verifications is append-only'); END",
]

PG_FUNCTIONS = [
    # SECURITY DEFINER: runs as the owner, so the app role needs no privilege on the head. The search path is
    # fixed to the one the migration runs with, so nobody can slip another audit_chain in front of it.
    """CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE head_seq bigint; head_hash varchar(64);
    BEGIN
      -- The writer sends the row's content hash as row_hash (models/audit_chain.py); the database gives the
      -- row its place: the head's row lock, held to COMMIT, makes concurrent writers one line.
      IF NEW.row_hash IS NULL OR NEW.row_hash !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'audit_log: the row has no content hash';
      END IF;
      SELECT last_seq, last_hash INTO head_seq, head_hash FROM audit_chain WHERE id = 1 FOR UPDATE;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_log: no chain head';
      END IF;
      NEW.id := nextval(pg_get_serial_sequence('audit_log', 'id'));  -- ids in chain order, whatever was sent
      NEW.seq := head_seq + 1;
      NEW.prev_hash := head_hash;
      NEW.row_hash := encode(sha256(convert_to(head_hash || E'\\n' || NEW.seq || E'\\n' || NEW.id || E'\\n'
                                               || NEW.row_hash, 'UTF8')), 'hex');
      UPDATE audit_chain SET last_seq = NEW.seq, last_hash = NEW.row_hash WHERE id = 1;
      RETURN NEW;
    END $$""",
    """CREATE FUNCTION audit_chain_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND (NEW.last_seq = OLD.last_seq + 1
         OR (NEW.last_seq = OLD.last_seq AND NEW.last_hash = OLD.last_hash)) THEN
        RETURN NEW;
      END IF;
      RAISE EXCEPTION 'audit_chain: the head only moves forward';
    END $$""",
    """CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$""",
]
PG_TRIGGERS = [
    "CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain()",
    "CREATE TRIGGER audit_chain_forward_only BEFORE UPDATE OR DELETE ON audit_chain "
    "FOR EACH ROW EXECUTE FUNCTION audit_chain_forward_only()",
    "CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain "
    "FOR EACH STATEMENT EXECUTE FUNCTION append_only()",
    "CREATE TRIGGER audit_verifications_no_change BEFORE UPDATE OR DELETE ON audit_verifications "
    "FOR EACH ROW EXECUTE FUNCTION append_only()",
    "CREATE TRIGGER audit_verifications_no_truncate BEFORE TRUNCATE ON audit_verifications "
    "FOR EACH STATEMENT EXECUTE FUNCTION append_only()",
]


def _chain_existing_rows(conn: sa.Connection) -> tuple[int, str]:
    """Give every existing row its place and hash, in id order; returns the head."""
    seq, prev = 0, GENESIS
    rows = conn.execute(sa.select(log.c.id, log.c.at, *(log.c[f] for f in STRING_FIELDS), log.c.detail)
                        .order_by(log.c.id)).all()
    updates: list[dict[str, Any]] = []
    for r in rows:
        seq += 1
        fields = dict(r._mapping) | {"seq": seq}
        h = row_hash(prev, fields)
        updates.append({"b_id": r.id, "seq": seq, "prev_hash": prev, "row_hash": h})
        prev = h
    if updates:
        conn.execute(log.update().where(log.c.id == sa.bindparam("b_id"))
                     .values(seq=sa.bindparam("seq"), prev_hash=sa.bindparam("prev_hash"),
                             row_hash=sa.bindparam("row_hash")), updates)
    return seq, prev


def upgrade() -> None:
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    op.create_table('audit_chain',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('last_seq', sa.BigInteger(), nullable=False),
                    sa.Column('last_hash', sa.String(length=64), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    op.create_table('audit_verifications',
                    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('ok', sa.Boolean(), nullable=False),
                    sa.Column('rows', sa.BigInteger(), nullable=False),
                    sa.Column('head_seq', sa.BigInteger(), nullable=False),
                    sa.Column('head_hash', sa.String(length=64), nullable=False),
                    sa.Column('problems', sa.Integer(), nullable=False),
                    sa.Column('problem', sa.String(length=30), nullable=True),
                    sa.Column('row_id', sa.BigInteger(), nullable=True),
                    sa.Column('row_seq', sa.BigInteger(), nullable=True),
                    sa.Column('detail', sa.String(length=500), nullable=True),
                    sa.Column('by', sa.String(length=64), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    # The existing rows get their hashes: the append-only triggers step aside for this one transaction.
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    else:
        op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('row_hash', sa.String(length=64), nullable=True))
    last_seq, last_hash = _chain_existing_rows(conn)
    conn.execute(head.insert().values(id=1, last_seq=last_seq, last_hash=last_hash))
    with op.batch_alter_table('audit_log', schema=None) as batch_op:  # SQLite: the table is rebuilt here
        batch_op.alter_column('seq', existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('row_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint('uq_audit_log_seq', ['seq'])
    if sqlite:
        for sql in SQLITE_LOG_TRIGGERS + SQLITE_OTHER_TRIGGERS:
            op.execute(sql)
    else:
        op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")
        for sql in PG_FUNCTIONS + PG_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for name in ("audit_log_no_update", "audit_log_no_delete", "audit_log_no_replace", "audit_log_chain_link",
                     "audit_log_chain_advance"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_chain ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_chain()")
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_log_seq', type_='unique')
        batch_op.drop_column('row_hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('seq')
    op.drop_table('audit_verifications')
    op.drop_table('audit_chain')
    if sqlite:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                       "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")
    else:
        op.execute("DROP FUNCTION IF EXISTS audit_chain_forward_only()")
        op.execute("DROP FUNCTION IF EXISTS append_only()")
