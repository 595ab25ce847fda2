"""A revision counter on every device's update row, for server processes sharing the database.

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-07

- ``device_updates.row_revision``: 1 when the row is created, raised by one
  by every ``UPDATE`` the store makes (the column's ``onupdate`` in
  :mod:`javia_updates.backends.schema`). A server process that cached a
  device's rows compares the count and the sum of these revisions with the
  database at the device's next request (together with its token, in one
  query) and reloads the rows when they differ, so a status report handled by
  one worker or replica is seen by the next heartbeat on any other
  (docs/architecture.md, "Processes").

Added with ``ADD COLUMN`` and a server default: no table is rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    op.add_column(
        "device_updates",
        sa.Column("row_revision", sa.Integer(), nullable=False, server_default=sa.text("1")),
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_column("device_updates", "row_revision", schema=_schema())
