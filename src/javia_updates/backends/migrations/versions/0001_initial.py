"""Initial schema: devices, updates, device_updates, audit_log.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written out column by column (not generated from ``schema.py`` at run time), so
this revision keeps meaning the same thing when later revisions change the
tables, and so ``--sql`` can print it. A test checks that the migrated
database equals :func:`javia_updates.backends.schema.build_tables`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import UTCDateTime, id_type, json_type

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_UPDATE_STATUSES = "'pending', 'downloading', 'installing', 'completed', 'failed', 'rolled_back', 'superseded', 'cancelled'"
_UPDATE_TYPES = "'scheduled', 'urgent', 'instant'"


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    schema = _schema()
    prefix = f"{schema}." if schema else ""
    op.create_table(
        "devices",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("device_uuid", sa.String(36), nullable=False),
        sa.Column("device_name", sa.String(200), nullable=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=True),
        sa.Column("current_version", sa.String(80), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", json_type(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("device_uuid", name=op.f("uq_devices_device_uuid")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_devices_token_hash")),
        sa.CheckConstraint(
            "status IN ('online', 'offline', 'updating')", name=op.f("ck_devices_status")
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index("ix_devices_last_seen", "devices", ["last_seen"], schema=schema)

    op.create_table(
        "updates",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("version", sa.String(80), nullable=False),
        sa.Column("version_major", sa.BigInteger(), nullable=False),
        sa.Column("version_minor", sa.BigInteger(), nullable=False),
        sa.Column("version_patch", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("update_type", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("package_url", sa.String(500), nullable=False),
        sa.Column("requires_system_packages", sa.Boolean(), nullable=False),
        sa.Column("system_packages", json_type(), nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("archive_size", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("targets", json_type(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_updates")),
        sa.UniqueConstraint("version", name=op.f("uq_updates_version")),
        sa.CheckConstraint(
            f"update_type IN ({_UPDATE_TYPES})", name=op.f("ck_updates_update_type")
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_updates_version_major_version_minor_version_patch",
        "updates",
        ["version_major", "version_minor", "version_patch"],
        schema=schema,
    )

    op.create_table(
        "device_updates",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("device_id", id_type(), nullable=False),
        sa.Column("update_id", id_type(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("install_type", sa.String(16), nullable=False),
        sa.Column("scheduled_for", UTCDateTime(), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_updates")),
        sa.UniqueConstraint(
            "device_id", "update_id", name=op.f("uq_device_updates_device_id_update_id")
        ),
        sa.CheckConstraint(
            f"status IN ({_UPDATE_STATUSES})", name=op.f("ck_device_updates_status")
        ),
        sa.CheckConstraint(
            f"install_type IN ({_UPDATE_TYPES})", name=op.f("ck_device_updates_install_type")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            [f"{prefix}devices.id"],
            name=op.f("fk_device_updates_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["update_id"],
            [f"{prefix}updates.id"],
            name=op.f("fk_device_updates_update_id_updates"),
            ondelete="CASCADE",
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_device_updates_update_id_status",
        "device_updates",
        ["update_id", "status"],
        schema=schema,
    )
    op.create_index(
        "ix_device_updates_device_id_status",
        "device_updates",
        ["device_id", "status"],
        schema=schema,
    )

    op.create_table(
        "audit_log",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("details", json_type(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"], schema=schema)


def downgrade() -> None:
    schema = _schema()
    for table in ("audit_log", "device_updates", "updates", "devices"):
        op.drop_table(table, schema=schema)
