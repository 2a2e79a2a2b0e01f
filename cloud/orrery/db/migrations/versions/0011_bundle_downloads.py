"""bundle downloads: per rollout member, how far the board's download of the bundle has come
(the chunk the board expects next, from its acks; the chunks queued so far; the count), the
round of chunk commands in force (a gap or a resumed download starts a new one, so a chunk is
sent again under a new id) and when the download last moved (a download that stops moving is
opened again with a fresh install_bundle, from what the board holds)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 17:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLS = ("dl_chunks", "dl_next", "dl_sent", "dl_round")


def upgrade() -> None:
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        for c in COLS:
            batch_op.add_column(sa.Column(c, sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dl_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.drop_column("dl_ms")
        for c in reversed(COLS):
            batch_op.drop_column(c)
