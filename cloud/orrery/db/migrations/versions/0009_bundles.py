"""app bundles: the registry's bundles table (immutable versions of the board's app, packed,
with their manifest), rollouts of a bundle (rollouts.bundle_id; workflow_id becomes nullable,
exactly one of the two is set), the app each member ran before (rollout_devices.prev_fw, for a
rollback) and the .mpy version each board reports (devices.mpy), so a bundle compiled for
another one is refused before anything is sent

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 17:11:14.738332
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _s(n: int | None = None) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _s(64), nullable=False),
        sa.Column("version", _s(64), nullable=False),
        sa.Column("sha256", _s(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("profile", _s(64), nullable=False),
        sa.Column("mpy_version", _s(16), nullable=False),
        sa.Column("source_hash", _s(64), nullable=False),
        sa.Column("manifest", _s(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", _s(64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.add_column("devices", sa.Column("mpy", _s(16), nullable=True))
    op.add_column("rollout_devices", sa.Column("prev_fw", _s(64), nullable=True))
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle_id", sa.Integer(), nullable=True))
        batch_op.alter_column("workflow_id", existing_type=sa.INTEGER(), nullable=True)


def downgrade() -> None:
    # a bundle rollout has no workflow: its rows cannot be kept under the old schema
    op.execute(
        "DELETE FROM rollout_log WHERE rollout_id IN "
        "(SELECT id FROM rollouts WHERE workflow_id IS NULL)"
    )
    op.execute(
        "DELETE FROM rollout_devices WHERE rollout_id IN "
        "(SELECT id FROM rollouts WHERE workflow_id IS NULL)"
    )
    op.execute("DELETE FROM rollouts WHERE workflow_id IS NULL")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.alter_column("workflow_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("bundle_id")
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.drop_column("prev_fw")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("mpy")
    op.drop_table("bundles")
