"""Links: names pointing at stream ids (a job's "latest log", issue 12).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

STREAM_ID = sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("name", STREAM_ID, primary_key=True),
        sa.Column("stream_id", STREAM_ID, nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_links_stream", "links", ["stream_id", "name"])


def downgrade() -> None:
    op.drop_index("ix_links_stream", table_name="links")
    op.drop_table("links")
