"""revoked sessions: logging out ends the session on the server too

`revoked_sessions`: the ids (hashes) of signed session cookies that were logged out before they expired;
the app refuses such a cookie (401 on the API, the login page for pages). Issue 16, part 4.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005s'
down_revision = '0004'


def upgrade() -> None:
    op.create_table(
        'revoked_sessions',
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('session_id'),
    )
    op.create_index(op.f('ix_revoked_sessions_expires_at'), 'revoked_sessions', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_revoked_sessions_expires_at'), table_name='revoked_sessions')
    op.drop_table('revoked_sessions')
