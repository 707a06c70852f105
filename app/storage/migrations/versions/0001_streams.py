"""The streams table as it was when migrations began.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column(
            "id",
            sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(40), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("finished_us", sa.BigInteger(), nullable=True),
        sa.Column("expected_size", sa.BigInteger(), nullable=True),
        sa.Column("tus", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index("ix_streams_created", "streams", ["created_us", "id"])
    op.create_index("ix_streams_state_created", "streams", ["state", "created_us", "id"])
    op.create_index("ix_streams_finished", "streams", ["finished_us"])


def downgrade() -> None:
    op.drop_table("streams")
