"""balance, cac and cmt tables of the open-bank contract, with the bank's seed row

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BANK = {
    "username": "open_web",
    "iban": "NL66OPEN0000000000",
    "token": "00000000000000000000",
    "amount": 100000000000000000,
    "lmt": -50000,
}


def upgrade() -> None:
    balance = op.create_table(
        "balance",
        sa.Column("balance_id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("iban", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lmt", sa.BigInteger, nullable=False, server_default="-50000"),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime, server_default=sa.func.now()),
    )
    # The reference has a plain index on iban; a unique one makes a duplicate IBAN impossible.
    op.create_index("balance_iban_idx", "balance", ["iban"], unique=True)
    op.execute(
        """
        CREATE FUNCTION balance_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER balance_updated_at BEFORE UPDATE ON balance "
        "FOR EACH ROW EXECUTE FUNCTION balance_set_updated_at()"
    )
    op.create_table(
        "cac",
        sa.Column("uuid", sa.Uuid, primary_key=True),
        sa.Column("username", sa.Text),
        sa.Column("iban", sa.Text),
        sa.Column("token", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.now()),
    )
    op.create_table(
        "cmt",
        sa.Column("uuid", sa.Uuid, primary_key=True),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.now()),
    )
    op.bulk_insert(balance, [BANK])


def downgrade() -> None:
    op.drop_table("cmt")
    op.drop_table("cac")
    op.execute("DROP TRIGGER IF EXISTS balance_updated_at ON balance")
    op.drop_table("balance")
    op.execute("DROP FUNCTION IF EXISTS balance_set_updated_at()")
