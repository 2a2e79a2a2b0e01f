"""command bodies: a command's envelope moves from commands to command_bodies, and its args
(a copy of the args in the envelope's signed body) are no longer stored twice

A workflow install's args and envelope are 11 KB each. SQLite rewrites a whole row, overflow
pages included, whenever its size changes, and every ack changes the commands row's size (it
fills in acked_ms, ack_code, ack_detail): at 22 KB a row, storing acks was bound at a few
thousand a second by the rewrites alone (PostgreSQL keeps such columns out of line, TOAST, and
copies a pointer). The envelope never changes with a publish or an ack (re-signing writes a
new one), so it gets its own table, keyed by the command's id, written once with the command
and read only to publish or sign again; the args, which the envelope's body carries as they
were signed, are read from it (``fleet.commands.resign``), so a workflow install writes its
blob once, not twice. No foreign key: every body is inserted with its command in the same
transaction (``fleet.commands.queue_many``), and nothing deletes commands. The downgrade
puts both columns back, the args from the envelopes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 15:10:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "command_bodies",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("envelope", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO command_bodies (id, envelope) SELECT id, envelope FROM commands")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_column("envelope")
        batch_op.drop_column("args")


def downgrade() -> None:
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("args", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column(
                "envelope", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=""
            )
        )
    if op.get_context().dialect.name == "postgresql":
        args = "((b.envelope::json ->> 'b')::json -> 'args')::text"
    else:
        args = "json_extract(json_extract(b.envelope, '$.b'), '$.args')"
    op.execute(
        "UPDATE commands SET"
        f" args = (SELECT {args} FROM command_bodies b WHERE b.id = commands.id),"
        " envelope = (SELECT b.envelope FROM command_bodies b WHERE b.id = commands.id)"
    )
    op.drop_table("command_bodies")
