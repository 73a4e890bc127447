"""Migration 0002a: registry entries say who set them. Run on a database of its own: a SQLite file, and a
PostgreSQL schema of its own when DATABASE_URL points at PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from tasks.adapters.database import alembic_config

NOW = datetime(2022, 5, 10, 8, 0, tzinfo=UTC)
CHILD, BLOCKED, GRANTED, OLD = "201001010000", "197001010000", "197102020000", "197203030000"  # serial 000 is never issued


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migration.db'}"
        return
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        pytest.skip("DATABASE_URL is not PostgreSQL")
    base = base.split("?")[0].replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"t_mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def _order(ref: str, order_type: str, region: str) -> dict[str, object]:
    return {"reference": ref, "order_type": order_type, "initiative": "care", "actions": [], "patient_pnr": CHILD,
            "patient_protected": False, "child_consent": False, "identity_checked": False, "urgent": False,
            "reason": "", "care_unit_hsa_id": f"DEMO-{region.upper()}-UNIT", "region": region, "status": "completed",
            "channel": "digital", "submitted_by": "DEMO-KALMAR-CLINICIAN", "created_at": NOW, "updated_at": NOW,
            "stage_plan": {}, "flow_name": order_type.replace("_", "-"), "version": 1}


def test_bare_entries_become_entries_with_their_origin_and_back(database: str) -> None:
    cfg = alembic_config(database)
    command.upgrade(cfg, "0001")
    eng = sa.create_engine(database)
    meta = sa.MetaData()
    meta.reflect(eng, only=["orders", "registry_applied_effects", "registry_people"])
    orders, effects, people = (meta.tables[n] for n in ("orders", "registry_applied_effects", "registry_people"))
    with eng.begin() as c:
        c.execute(orders.insert(), [_order("RO-2022-000001", "block_guardian", "stockholm"),
                                    _order("RO-2022-000002", "minor_access", "jonkoping")])
        c.execute(effects.insert(), [
            {"order_reference": "RO-2022-000001", "effect": "block_guardian", "target": BLOCKED,
             "system_reference": "SIM-RO-2022-000001", "at": NOW},
            {"order_reference": "RO-2022-000002", "effect": "grant_minor_access", "target": GRANTED,
             "system_reference": "SIM-RO-2022-000002", "at": NOW}])
        c.execute(people.insert(), [
            {"pnr": CHILD, "blocked_guardians": [BLOCKED, OLD], "minor_access": [GRANTED, "minor"]},
            {"pnr": OLD, "blocked_guardians": [], "minor_access": []}])
    command.upgrade(cfg, "0002a")
    with eng.connect() as c:
        rows = {r.pnr: r for r in c.execute(sa.select(people))}
    assert rows[CHILD].blocked_guardians == [
        {"target": BLOCKED, "initiative": "care", "region": "stockholm", "order": "RO-2022-000001"},
        {"target": OLD, "initiative": "care", "region": "", "order": ""}]
    assert rows[CHILD].minor_access == [
        {"target": GRANTED, "initiative": "care", "region": "jonkoping", "order": "RO-2022-000002"},
        {"target": "minor", "initiative": "care", "region": "", "order": ""}]
    assert (rows[OLD].blocked_guardians, rows[OLD].minor_access) == ([], [])

    # What the application reads from the converted rows.
    from sqlalchemy.orm import Session

    from models.access import Restriction
    from tasks.adapters.gateway import access_state
    with Session(eng) as s:
        state = access_state(s, CHILD)
    assert state.guardian_blocks == {BLOCKED: Restriction("care", "stockholm", "RO-2022-000001"),
                                     OLD: Restriction("care", "", "")}
    assert state.minor_access == frozenset({GRANTED, "minor"})

    command.downgrade(cfg, "0001")
    with eng.connect() as c:
        back = {r.pnr: r for r in c.execute(sa.select(people))}
    assert (back[CHILD].blocked_guardians, back[CHILD].minor_access) == ([BLOCKED, OLD], [GRANTED, "minor"])
    eng.dispose()
