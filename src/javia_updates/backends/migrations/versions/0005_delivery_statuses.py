"""Two more progress statuses of a device's update: ``staged`` and ``retrying``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

- ``staged``: the device downloaded, verified and prepared the release ahead
  of its maintenance window (or idle moment); only stop, switch, start and the
  health check remain (docs/update-types.md, staging).
- ``retrying``: a transient fault (a package index or mirror down, the network
  cut, a full disk) stopped the work; the device retries with backoff until
  the deadline, and ``error_message`` says why (docs/agent.md).

Only the CHECK constraint on ``device_updates.status`` changes. On SQLite the
table is rebuilt by Alembic's batch mode (no other table references
``device_updates``, so no row elsewhere is touched).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import NAMING_CONVENTION, UTCDateTime, id_type

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BEFORE = (
    "'pending', 'downloading', 'installing', 'completed', 'failed', 'rolled_back', "
    "'superseded', 'cancelled'"
)
_AFTER = _BEFORE + ", 'staged', 'retrying'"


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def _table_before(statuses: str) -> sa.Table:
    """``device_updates`` as revisions 0001 to 0004 left it (a frozen snapshot).

    Batch mode copies SQLite's table from this instead of reflecting it, so
    ``javia db sql --dialect sqlite`` (no database) can render the rebuild too.
    """
    schema = _schema()
    prefix = f"{schema}." if schema else ""
    return sa.Table(
        "device_updates",
        sa.MetaData(naming_convention=NAMING_CONVENTION),
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            id_type(),
            sa.ForeignKey(f"{prefix}devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "update_id",
            id_type(),
            sa.ForeignKey(f"{prefix}updates.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("install_type", sa.String(16), nullable=False),
        sa.Column("scheduled_for", UTCDateTime(), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("regressed_at", UTCDateTime(), nullable=True),
        sa.Column("regression_reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("device_id", "update_id"),
        sa.CheckConstraint(f"status IN ({statuses})", name="status"),
        sa.CheckConstraint(
            "install_type IN ('scheduled', 'urgent', 'instant')", name="install_type"
        ),
        sa.Index(None, "update_id", "status"),
        sa.Index(None, "device_id", "status"),
        sqlite_autoincrement=True,
        schema=schema,
    )


def _replace_check(before: str, after: str) -> None:
    sqlite = context.get_context().dialect.name == "sqlite"
    with op.batch_alter_table(
        "device_updates",
        schema=_schema(),
        copy_from=_table_before(before) if sqlite else None,
    ) as batch:
        batch.drop_constraint(op.f("ck_device_updates_status"), type_="check")
        batch.create_check_constraint(op.f("ck_device_updates_status"), f"status IN ({after})")


def upgrade() -> None:
    _replace_check(_BEFORE, _AFTER)


def downgrade() -> None:
    # Rows in the new statuses go back to the status an older server knows.
    schema = _schema()
    table = f"{schema}.device_updates" if schema else "device_updates"
    op.execute(f"UPDATE {table} SET status = 'pending' WHERE status IN ('staged', 'retrying')")
    _replace_check(_AFTER, _BEFORE)
