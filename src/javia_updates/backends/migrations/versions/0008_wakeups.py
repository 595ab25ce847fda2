"""Wake-ups between server processes on one SQLite file.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

- ``wakeups``: one row per wake-up notice (docs/architecture.md, "Wake-ups"):
  which devices should heartbeat now and why, as compact JSON, and the random
  id of the server process that wrote it (which delivered it itself). Every
  process on the same SQLite file reads the rows newer than the last it saw;
  rows older than a minute are deleted by the writers. On PostgreSQL the
  notices travel by ``LISTEN``/``NOTIFY`` and the table stays empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import UTCDateTime, id_type

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    op.create_table(
        "wakeups",
        sa.Column("id", id_type(), autoincrement=True, nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wakeups")),
        sqlite_autoincrement=True,
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_table("wakeups", schema=_schema())
