"""the orderer's callback phone on the order

`orders.callback_phone`: the number on-call support calls back for an urgent order (the orderer's, staff
data, not the patient's). Existing orders have none: the form did not ask.
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003r'


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('callback_phone', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('callback_phone')
