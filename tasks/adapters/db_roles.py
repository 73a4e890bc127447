"""PostgreSQL: the role the app and the workers connect as, with what they need and nothing more.

The owner of the schema runs the migrations (`python -m tasks.adapters.database migrate`) and owns every table, trigger
and function. The app, the flow-serving process, the workers and the CLI connect as another role, made or
brought up to date by `restriction-orders app-role NAME` (run as the owner, after every migration):

- `audit_log`, `audit_verifications`: SELECT and INSERT only. No UPDATE, DELETE or TRUNCATE, and, not being
  the owner, no ALTER TABLE, DROP TRIGGER or DROP TABLE: the append-only triggers cannot be taken away;
- `audit_chain` (the hash chain's head) and `alembic_version`: SELECT only. The head is advanced by the audit
  insert trigger, which runs as the owner (SECURITY DEFINER);
- every other table of the schema: SELECT, INSERT, UPDATE, DELETE; the schema's sequences: USAGE, SELECT.

Whatever the role had before on the schema's tables is revoked first, so running it again after a
migration gives exactly this. A role that owns the audit table, or is a superuser, is refused.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, Engine, text

from tasks.adapters.database import make_engine

APPEND_ONLY = ("audit_log", "audit_verifications")
READ_ONLY = ("audit_chain", "alembic_version")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class RoleError(RuntimeError):
    pass


def _ident(name: str) -> str:
    if not ROLE_NAME.match(name):
        raise RoleError(f"not a plain PostgreSQL name: {name!r} (lowercase letters, digits, _)")
    return f'"{name}"'


def privileges(table: str) -> str:
    if table in APPEND_ONLY:
        return "SELECT, INSERT"
    if table in READ_ONLY:
        return "SELECT"
    return "SELECT, INSERT, UPDATE, DELETE"


def _literal(conn: Connection, value: str) -> str:
    from psycopg import sql
    raw = conn.connection.driver_connection
    return sql.Literal(value).as_string(raw)


def grant_app_role(url: str, role: str, password: str | None = None) -> dict[str, str]:
    """Create `role` (LOGIN) if missing, set its password if given, and grant it the privileges above on the
    current schema of `url`. Returns {table: privileges}."""
    quoted = _ident(role)
    eng = make_engine(url)
    try:
        return _grant(eng, role, quoted, password)
    finally:
        eng.dispose()


def _grant(eng: Engine, role: str, quoted: str, password: str | None) -> dict[str, str]:
    if eng.dialect.name != "postgresql":
        raise RoleError("app roles are for PostgreSQL; on SQLite the file's permissions are the boundary")
    with eng.begin() as c:
        schema = str(c.execute(text("SELECT current_schema()")).scalar_one())
        owner = c.execute(text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = 'audit_log'"),
                          {"s": schema}).scalar()
        if owner is None:
            raise RoleError(f"no audit_log in schema {schema}: migrate first")
        if owner == role:
            raise RoleError(f"{role} owns audit_log: the app must connect as another role than the owner")
        exists = c.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
        if exists is None:
            c.execute(text(f"CREATE ROLE {quoted} LOGIN"))
        elif exists[0]:
            raise RoleError(f"{role} is a superuser: it could do anything to the audit log")
        if password:
            c.execute(text(f"ALTER ROLE {quoted} PASSWORD {_literal(c, password)}"))
        sch = _ident(schema) if ROLE_NAME.match(schema) else '"' + schema.replace('"', '""') + '"'
        c.execute(text(f"GRANT USAGE ON SCHEMA {sch} TO {quoted}"))
        c.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {sch} FROM {quoted}"))
        c.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {sch} FROM {quoted}"))
        tables = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"),
                           {"s": schema}).scalars().all()
        granted: dict[str, str] = {}
        for t in tables:
            granted[t] = privileges(t)
            c.execute(text(f'GRANT {granted[t]} ON {sch}."{t}" TO {quoted}'))
        c.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {sch} TO {quoted}"))
    return granted
