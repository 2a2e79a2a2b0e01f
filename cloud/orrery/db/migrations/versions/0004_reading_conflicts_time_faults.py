"""reading conflicts and time faults, and their device counters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 09:34:00.375712
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("conflicts", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("bad_time", sa.BigInteger(), server_default="0", nullable=False)
        )

    op.create_table(
        "reading_conflicts",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("boot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("up_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("historical", sa.Boolean(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "boot", "seq", "channel", "value", "up_ms"),
    )
    op.create_table(
        "time_faults",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("boot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("detected_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "boot", "seq"),
    )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("bad_time")
        batch_op.drop_column("conflicts")

    op.drop_table("time_faults")
    op.drop_table("reading_conflicts")
