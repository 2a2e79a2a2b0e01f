"""when a rollout may send: rollouts.start_at_ms (nothing is sent before), rollouts.window (its
maintenance windows, canonical ``--window`` text) and rollouts.window_tz (``UTC``, a zone name,
or ``tag.KEY``: each device's tag names its zone), and an index on device_tags (key, value): the
zones a key's tags name, read on each tick of such a rollout in a few index steps

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 15:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("start_at_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("window", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(
            sa.Column("window_tz", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    op.create_index("ix_device_tags_key_value", "device_tags", ["key", "value"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_device_tags_key_value", table_name="device_tags")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("window_tz")
        batch_op.drop_column("window")
        batch_op.drop_column("start_at_ms")
