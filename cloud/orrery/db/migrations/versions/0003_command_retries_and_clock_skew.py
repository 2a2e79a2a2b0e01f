"""command retries and clock skew: commands.sends, retry_ms, skew_s, skew_boot, resigns;
device_sessions.clock_offset_ms

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sends", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("retry_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("skew_s", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("skew_boot", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("resigns", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("device_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clock_offset_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device_sessions", schema=None) as batch_op:
        batch_op.drop_column("clock_offset_ms")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_column("resigns")
        batch_op.drop_column("skew_boot")
        batch_op.drop_column("skew_s")
        batch_op.drop_column("retry_ms")
        batch_op.drop_column("sends")
