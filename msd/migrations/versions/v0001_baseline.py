"""The MSD schema as it was before Alembic: local sessions, keywords, held records, geo cells.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

# Frozen copies of the column types of msd/store.py at this revision: a later change to
# the models must come with a new revision, never an edit here.
_KEY = sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql")
_CELL = sa.String(24).with_variant(sa.String(24, collation="C"), "postgresql")
_URI = sa.String(330)


def upgrade() -> None:
    op.create_table(
        "local_sessions",
        sa.Column("domain", sa.String(253), primary_key=True),
        sa.Column("uri", _URI, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_local_sessions_expires_at", "local_sessions", ["expires_at"])
    op.create_table(
        "local_keywords",
        sa.Column("uri", _URI, primary_key=True),
        sa.Column("keyword", sa.String(64), primary_key=True),
    )
    op.create_index("ix_local_keywords_keyword", "local_keywords", ["keyword"])
    op.create_table(
        "global_records",
        sa.Column("keyword", sa.String(64), primary_key=True),
        sa.Column("uri", _URI, primary_key=True),
        sa.Column("shadow", sa.Boolean, primary_key=True),
        sa.Column("key", _KEY, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("origin", sa.String(253), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    for column in ("uri", "key", "expires_at"):
        op.create_index(f"ix_global_records_{column}", "global_records", [column])
    op.create_table(
        "geo_cells",
        sa.Column("cell", _CELL, primary_key=True),
        sa.Column("uri", _URI, primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
    )
    op.create_index("ix_geo_cells_uri", "geo_cells", ["uri"])


def downgrade() -> None:
    for table in ("geo_cells", "global_records", "local_keywords", "local_sessions"):
        op.drop_table(table)
