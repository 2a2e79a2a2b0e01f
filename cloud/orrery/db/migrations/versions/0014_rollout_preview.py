"""rollout previews: a rollout's ``--preview-gate`` bounds (their text), its stored preview
(the report as JSON, without every device's entry: those of the most changed devices and of
the devices that broke a bound) and when that preview ran; ``start`` refuses a rollout whose
stored preview broke its gate (issue 18)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 20:00:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preview_gate", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(sa.Column("preview", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("preview_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("preview_ms")
        batch_op.drop_column("preview")
        batch_op.drop_column("preview_gate")
