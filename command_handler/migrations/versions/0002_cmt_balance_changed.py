"""cmt_balance_changed: the BalanceChanged events each handled transfer produced

A replayed ConfirmMoneyTransfer must re-send everything its first attempt
produced, with the same content (the reference lost these events). The rows
are written in the same transaction as the cmt row and the balance changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cmt_balance_changed",
        sa.Column("cmt_uuid", sa.Uuid, sa.ForeignKey("cmt.uuid", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.SmallInteger, nullable=False),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("iban", sa.Text, nullable=False),
        sa.Column("new_balance", sa.BigInteger, nullable=False),
        sa.Column("changed_by", sa.BigInteger, nullable=False),
        sa.Column("from_to", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("cmt_uuid", "seq"),
    )


def downgrade() -> None:
    op.drop_table("cmt_balance_changed")
