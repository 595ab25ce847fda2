"""Why a device's update failed: ``device_updates.failure``.

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-07

- ``device_updates.failure``: the structured failure a device sent with its
  ``failed`` or ``rolled_back`` report (``javia_core.failures.FailureDetails``
  as JSON: class, step, exit code or signal, output tails, reason; at most
  192 KiB, validated by the server before it is stored), or NULL. Added with a
  plain ``ADD COLUMN``: no table is rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import json_type

revision = "0006"
down_revision = "0008"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    op.add_column(
        "device_updates", sa.Column("failure", json_type(), nullable=True), schema=_schema()
    )


def downgrade() -> None:
    # Native DROP COLUMN (SQLite 3.35 or newer), without a table rebuild.
    op.drop_column("device_updates", "failure", schema=_schema())
