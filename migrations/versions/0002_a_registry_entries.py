"""registry entries say who set them

Each blocked guardian and each minor-access grant in `registry_people` becomes an entry
`{"target", "initiative", "region", "order"}` instead of a bare number (or "minor"), in the same JSON
columns. Existing entries get the order that applied them from `registry_applied_effects`; one without
such a row (set before effects were recorded) keeps initiative "care" – guardian blocks and minor access
are care-only order types – and an empty region and order.
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0002a'
down_revision = '0001'

people = sa.table('registry_people', sa.column('pnr', sa.String), sa.column('blocked_guardians', sa.JSON),
                  sa.column('minor_access', sa.JSON))
effects = sa.table('registry_applied_effects', sa.column('id', sa.Integer), sa.column('order_reference', sa.String),
                   sa.column('effect', sa.String), sa.column('target', sa.String))
orders = sa.table('orders', sa.column('reference', sa.String), sa.column('patient_pnr', sa.String),
                  sa.column('initiative', sa.String), sa.column('region', sa.String))

COLUMNS = {'blocked_guardians': 'block_guardian', 'minor_access': 'grant_minor_access'}


def _origin(conn: sa.Connection, pnr: str, effect: str, target: str) -> dict[str, str]:
    row = conn.execute(
        sa.select(orders.c.reference, orders.c.initiative, orders.c.region)
        .select_from(effects.join(orders, orders.c.reference == effects.c.order_reference))
        .where(effects.c.effect == effect, effects.c.target == target, orders.c.patient_pnr == pnr)
        .order_by(effects.c.id.desc()).limit(1)).first()
    if row is None:
        return {'target': target, 'initiative': 'care', 'region': '', 'order': ''}
    return {'target': target, 'initiative': row.initiative, 'region': row.region, 'order': row.reference}


def upgrade() -> None:
    conn = op.get_bind()
    for person in conn.execute(sa.select(people)).all():
        values: dict[str, Any] = {}
        for column, effect in COLUMNS.items():
            entries = getattr(person, column) or []
            if any(isinstance(e, str) for e in entries):
                values[column] = [e if isinstance(e, dict) else _origin(conn, person.pnr, effect, e)
                                  for e in entries]
        if values:
            conn.execute(people.update().where(people.c.pnr == person.pnr).values(**values))


def downgrade() -> None:
    conn = op.get_bind()
    for person in conn.execute(sa.select(people)).all():
        values = {column: sorted(e['target'] if isinstance(e, dict) else e for e in (getattr(person, column) or []))
                  for column in COLUMNS}
        conn.execute(people.update().where(people.c.pnr == person.pnr).values(**values))
