"""a guardian's protected identity on the order; a phone number in the staff directory

`orders.guardian_protected`: the guardian named on the order has protected identity (skyddade
personuppgifter), so the order is handled by phone and a minor_access grant to that guardian is refused.
Existing orders get false: the flag could not be recorded before.

`staff.phone`: from the region's HSA export (`restriction-orders directory import`); empty for existing rows.
"""
import sqlalchemy as sa
from alembic import op

revision = '0003r'
down_revision = '0003a'


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('guardian_protected', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('staff', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('staff', schema=None) as batch_op:
        batch_op.drop_column('phone')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('guardian_protected')
