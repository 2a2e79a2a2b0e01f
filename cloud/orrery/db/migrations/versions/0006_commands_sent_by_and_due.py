"""operator commands: commands.sent_by (who sent it: the OS user of ``orrery devices send``) and
commands.due_ms (not published before then: the rate limit of a send to many devices)

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


def downgrade() -> None:
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_column("due_ms")
        batch_op.drop_column("sent_by")
