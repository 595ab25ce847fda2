"""Device tags and tag targeting.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07

- ``devices.tags``: the operator's tags of a device, a sorted JSON list of
  strings (``[]`` for every existing device). Added with ``ADD COLUMN`` and a
  server default, so no table is rebuilt (a rebuild of ``devices`` would, with
  foreign keys on, cascade-delete its ``device_updates``).
- ``updates.target_tags``: the tags a publish targeted (a device with any of
  them), or NULL: the update targets by uuid or every device.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import json_type

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    schema = _schema()
    op.add_column(
        "devices",
        sa.Column("tags", json_type(), nullable=False, server_default=sa.text("'[]'")),
        schema=schema,
    )
    op.add_column("updates", sa.Column("target_tags", json_type(), nullable=True), schema=schema)


def downgrade() -> None:
    schema = _schema()
    # Native DROP COLUMN (SQLite 3.35 or newer), again without a table rebuild.
    op.drop_column("updates", "target_tags", schema=schema)
    op.drop_column("devices", "tags", schema=schema)
