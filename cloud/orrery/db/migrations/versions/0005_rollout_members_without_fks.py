"""rollout members without foreign keys: rollout_devices loses its two, to rollouts and devices,
and its index on state alone

Planning inserts a row per target device (100,000s at once); on PostgreSQL the two per-row
foreign-key triggers were 60% of that insert. Every query on members' states also names the
rollout (the primary key's first column), so the index on state only cost each insert and
each state change (on PostgreSQL, an update of an indexed column is never a HOT update). Every member is inserted by ``Orchestrator``
from device rows read in the same transaction, into the rollout that transaction created or
holds, and nothing deletes devices or rollouts: the code path keeps what the keys checked
(tests/cloud/fleet/test_rollout.py checks it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 12:15:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _table(with_fks: bool) -> sa.Table:
    # the table as 0002 made it (with_fks), or as 0005 leaves it (SQLite rebuilds it from this)
    state_index = [sa.Index("ix_rollout_devices_state", "state")] if with_fks else []
    fks = (
        [
            sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
            sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        ]
        if with_fks
        else []
    )
    return sa.Table(
        "rollout_devices",
        sa.MetaData(),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("command_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("prev_wf", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("prev_ver", sa.Integer(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("baseline", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        *fks,
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
        sa.Index("ix_rollout_devices_device_id", "device_id"),
        *state_index,
    )


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_constraint("rollout_devices_device_id_fkey", "rollout_devices", type_="foreignkey")
        op.drop_constraint("rollout_devices_rollout_id_fkey", "rollout_devices", type_="foreignkey")
        op.drop_index("ix_rollout_devices_state", table_name="rollout_devices")
        return
    with op.batch_alter_table(
        "rollout_devices", recreate="always", copy_from=_table(with_fks=False)
    ):
        pass


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.create_foreign_key(
            "rollout_devices_device_id_fkey", "rollout_devices", "devices", ["device_id"], ["id"]
        )
        op.create_foreign_key(
            "rollout_devices_rollout_id_fkey", "rollout_devices", "rollouts", ["rollout_id"], ["id"]
        )
        op.create_index("ix_rollout_devices_state", "rollout_devices", ["state"])
        return
    with op.batch_alter_table(
        "rollout_devices", recreate="always", copy_from=_table(with_fks=True)
    ):
        pass
