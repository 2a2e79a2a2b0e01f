"""device logs: the lines boards send on up/log (warnings, errors, workflow state changes),
one row each, keyed by (device, boot, seq) so a redelivered message is stored once

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 18:05:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_logs",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("boot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("up_ms", sa.BigInteger(), nullable=False),
        sa.Column("event_ms", sa.BigInteger(), nullable=True),
        sa.Column("level", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("a", sa.Integer(), nullable=False),
        sa.Column("b", sa.Integer(), nullable=False),
        sa.Column("text", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "boot", "seq"),
    )
    op.create_index("ix_device_logs_device_received", "device_logs", ["device_id", "received_ms"])


def downgrade() -> None:
    op.drop_index("ix_device_logs_device_received", table_name="device_logs")
    op.drop_table("device_logs")
