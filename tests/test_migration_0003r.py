"""Migration 0003r: `orders.guardian_protected` and `staff.phone`, on a SQLite file of its own; after it the
database matches the tables in models/tables.py, and it can be undone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from models.tables import Base
from tasks.adapters.database import alembic_config

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_existing_rows_get_false_and_no_phone_and_the_schema_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0002a")
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO staff (hsa_id, name, email, roles, active) "
                          "VALUES ('SE1', 'Anna', 'a@x.invalid', '[]', 1)"))
        c.execute(sa.text(
            "INSERT INTO orders (reference, order_type, initiative, actions, patient_pnr, patient_protected, "
            "child_consent, identity_checked, urgent, reason, care_unit_hsa_id, region, status, channel, "
            "submitted_by, created_at, updated_at, stage_plan, flow_name, version) VALUES ('RO-2026-000001', "
            "'block_guardian', 'care', '[]', '191212121212', 0, 0, 0, 0, '', 'U', 'kalmar', 'submitted', "
            "'digital', 'SE1', :now, :now, '{}', 'block-guardian', 1)"), {"now": NOW})
    command.upgrade(cfg, "head")
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT guardian_protected FROM orders")).scalar_one() in (0, False)
        assert c.execute(sa.text("SELECT phone FROM staff")).scalar_one() is None
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []
    command.downgrade(cfg, "0002a")
    with eng.connect() as c:
        assert "guardian_protected" not in {col["name"] for col in sa.inspect(c).get_columns("orders")}
        assert "phone" not in {col["name"] for col in sa.inspect(c).get_columns("staff")}
    eng.dispose()
