"""who did it, and when a command is due: commands.sent_by (the OS user of ``orrery devices send``,
or who created the rollout that sent it), commands.due_ms (not published before then: the rate
limit of a send to many devices), rollouts.created_by and rollout_log.actor (who did what; None:
the orchestrator itself)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 15:00:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sent_by", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("due_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    with op.batch_alter_table("rollout_log", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("rollout_log", schema=None) as batch_op:
        batch_op.drop_column("actor")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("created_by")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_column("due_ms")
        batch_op.drop_column("sent_by")
