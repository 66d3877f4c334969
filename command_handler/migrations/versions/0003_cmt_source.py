"""cmt source: the record (topic, partition, offset) a transfer was first handled from

The same record redelivered (after a crash or a rebalance, before its offset
was committed) re-sends the feedback and the BalanceChanged events; a new
record with an id already handled (a client retry) gets the feedback only, so
the GraphQL endpoint, which keeps every BalanceChanged as a transaction row,
does not show the transfer twice. Rows handled before this revision (or by the
reference handler) have no source: their replays get the feedback only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cmt", sa.Column("source_topic", sa.Text))
    op.add_column("cmt", sa.Column("source_partition", sa.Integer))
    op.add_column("cmt", sa.Column("source_offset", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("cmt", "source_offset")
    op.drop_column("cmt", "source_partition")
    op.drop_column("cmt", "source_topic")
