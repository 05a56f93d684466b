"""An index on local_sessions.uri: keyword and geo rows join local sessions by URI alone.

The primary key (domain, uri) cannot serve a lookup by URI, so every local search
scanned all of the domain's sessions (2 ms at 3,000, growing with them; docs/bench.md).
Adding an index leaves the previous release working on the new schema.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None


def upgrade() -> None:
    # IF NOT EXISTS: a database made by a development build that created this index at
    # open (CREATE INDEX IF NOT EXISTS from the models) has no version table, so it is
    # stamped with the baseline and arrives here with the index already in place.
    op.create_index("ix_local_sessions_uri", "local_sessions", ["uri"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_local_sessions_uri", table_name="local_sessions")
