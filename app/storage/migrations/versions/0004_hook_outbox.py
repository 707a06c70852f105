"""The outbox of post-* webhook deliveries (README "Webhooks").

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "hook_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("delivery_id", sa.String(40), nullable=False),
        sa.Column("hook", sa.Text(), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column(
            "stream_id",
            sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_us", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claim_until_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_hook_outbox_chain", "hook_outbox", ["hook", "stream_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_hook_outbox_chain", table_name="hook_outbox")
    op.drop_table("hook_outbox")
