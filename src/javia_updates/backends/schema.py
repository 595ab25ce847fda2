"""The metadata tables, defined once (DESIGN.md section 5).

SQLAlchemy Core only, and only portable constructs, so the same definitions
serve SQLite (``local`` backend) and PostgreSQL (where the tables live in their
own ``javia`` schema, out of reach of Supabase's public data API: pass
``schema="javia"`` to :func:`build_tables`).

The Alembic migrations in ``backends/migrations/versions`` create exactly
these tables; a test compares the migrated database with these definitions.

Times are aware UTC datetimes in Python (:class:`UTCDateTime`): ``timestamptz``
on PostgreSQL, ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC text on SQLite, which sorts
and compares correctly as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from javia_core.models import DeviceStatus, RolloutState, UpdateStatus, UpdateType
from javia_updates.webhooks.schema import WebhookTables, define_webhook_tables

__all__ = [
    "NAMING_CONVENTION",
    "POSTGRES_SCHEMA",
    "Tables",
    "UTCDateTime",
    "build_tables",
    "default_schema",
    "id_type",
    "json_type",
]

POSTGRES_SCHEMA = "javia"

# Stable constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime column.

    Binding a naive datetime is a programming error (``ValueError``): every
    time javia stores is an instant. Values read back are aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: javia stores only aware UTC instants")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> Any:
    """JSON; JSONB on PostgreSQL. Python None is SQL NULL, not the JSON ``null``."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def default_schema(dialect_name: str) -> str | None:
    """The schema javia's tables live in on a database of this dialect.

    PostgreSQL: ``javia`` (out of reach of Supabase's public data API,
    DESIGN.md section 5); SQLite has no schemas: None.
    """
    return POSTGRES_SCHEMA if dialect_name == "postgresql" else None


def id_type() -> Any:
    """Row ids: BIGINT, or INTEGER on SQLite (which only auto-increments INTEGER PRIMARY KEY)."""
    # SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
    return BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: Any) -> str:
    quoted = ", ".join(f"'{value.value}'" for value in values)
    return f"{column} IN ({quoted})"


@dataclass(frozen=True)
class Tables:
    """The tables of one schema, and their ``MetaData``."""

    metadata: MetaData
    devices: Table
    updates: Table
    device_updates: Table
    audit_log: Table
    enrollment_tokens: Table
    rollouts: Table
    webhooks: WebhookTables
    wakeups: Table


def build_tables(schema: str | None = None) -> Tables:
    """Define the tables in ``schema`` (None: the database default, as on SQLite).

    Args:
        schema: the PostgreSQL schema to hold the tables, e.g. ``"javia"``.

    Returns:
        A fresh :class:`Tables`; call once per store.
    """
    metadata = MetaData(schema=schema, naming_convention=NAMING_CONVENTION)
    # sqlite_autoincrement: ids are never reused, so a device never confuses a
    # new update with a deleted one of the same id.
    prefix = f"{schema}." if schema else ""

    devices = Table(
        "devices",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("device_uuid", String(36), nullable=False),
        Column("device_name", String(200), nullable=True),
        Column("registered_at", UTCDateTime(), nullable=False),
        Column("last_seen", UTCDateTime(), nullable=True),
        Column("current_version", String(80), nullable=True),
        Column("timezone", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("metadata", json_type(), nullable=False),
        Column("token_hash", String(64), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        # Set when the operator revoked the device's token (revision 0002); the
        # token hash is then replaced by the hash of a token nobody holds.
        Column("token_revoked_at", UTCDateTime(), nullable=True),
        # The operator's tags, a sorted JSON list of strings (revision 0004).
        Column("tags", json_type(), nullable=False, server_default=text("'[]'")),
        UniqueConstraint("device_uuid"),
        UniqueConstraint("token_hash"),
        CheckConstraint(_in("status", DeviceStatus), name="status"),
        Index(None, "last_seen"),
        sqlite_autoincrement=True,
    )

    updates = Table(
        "updates",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("version", String(80), nullable=False),
        # The version's numbers, so SQL can order numerically (v1.10.0 > v1.9.0).
        Column("version_major", BigInteger(), nullable=False),
        Column("version_minor", BigInteger(), nullable=False),
        Column("version_patch", BigInteger(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("update_type", String(16), nullable=False),
        Column("description", Text(), nullable=False),
        # Where the blob store keeps the three package objects.
        Column("package_url", String(500), nullable=False),
        Column("requires_system_packages", Boolean(), nullable=False),
        Column("system_packages", json_type(), nullable=False),
        Column("app", String(64), nullable=False),
        Column("key_id", String(16), nullable=False),
        Column("archive_size", BigInteger(), nullable=False),
        Column("archive_sha256", String(64), nullable=False),
        Column("manifest", LargeBinary(), nullable=False),
        Column("signature", LargeBinary(), nullable=False),
        Column("targets", json_type(), nullable=True),
        # Tags the publish targeted (a device with any of them), or NULL (revision 0004).
        Column("target_tags", json_type(), nullable=True),
        UniqueConstraint("version"),
        CheckConstraint(_in("update_type", UpdateType), name="update_type"),
        Index(None, "version_major", "version_minor", "version_patch"),
        sqlite_autoincrement=True,
    )

    device_updates = Table(
        "device_updates",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column(
            "device_id",
            id_type(),
            ForeignKey(f"{prefix}devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column(
            "update_id",
            id_type(),
            ForeignKey(f"{prefix}updates.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("status", String(16), nullable=False),
        # The timing rule this row follows: the update's type, or a more urgent
        # one inherited from rows it superseded (DESIGN.md section 4).
        Column("install_type", String(16), nullable=False),
        Column("scheduled_for", UTCDateTime(), nullable=False),
        Column("window_end", UTCDateTime(), nullable=True),
        Column("started_at", UTCDateTime(), nullable=True),
        Column("completed_at", UTCDateTime(), nullable=True),
        Column("error_message", Text(), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        # A post-install regression recorded on a completed row (revision 0003;
        # the status stays completed, docs/rollouts.md).
        Column("regressed_at", UTCDateTime(), nullable=True),
        Column("regression_reason", Text(), nullable=True),
        # Raised by every UPDATE of the row (revision 0009): other server
        # processes compare a device's count and sum of these with what they
        # cached (docs/architecture.md, "Processes").
        Column(
            "row_revision",
            Integer(),
            nullable=False,
            server_default=text("1"),
            onupdate=literal_column("row_revision") + 1,
        ),
        # Why it failed, as the device reported it (revision 0006): a
        # javia_core.failures.FailureDetails as JSON, or NULL.
        Column("failure", json_type(), nullable=True),
        UniqueConstraint("device_id", "update_id"),
        CheckConstraint(_in("status", UpdateStatus), name="status"),
        CheckConstraint(_in("install_type", UpdateType), name="install_type"),
        Index(None, "update_id", "status"),
        Index(None, "device_id", "status"),
        sqlite_autoincrement=True,
    )

    audit_log = Table(
        "audit_log",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("at", UTCDateTime(), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("action", String(64), nullable=False),
        Column("details", json_type(), nullable=False),
        Index(None, "at"),
        sqlite_autoincrement=True,
    )

    # Enrollment tokens (revision 0002): a device holding one registers itself
    # without the admin key, at most max_uses times, until expires_at.
    enrollment_tokens = Table(
        "enrollment_tokens",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("token_hash", String(64), nullable=False),
        Column("label", String(200), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
        Column("max_uses", Integer(), nullable=False),
        Column("uses", Integer(), nullable=False),
        Column("revoked_at", UTCDateTime(), nullable=True),
        UniqueConstraint("token_hash"),
        CheckConstraint("uses >= 0 AND uses <= max_uses AND max_uses >= 1", name="uses"),
        sqlite_autoincrement=True,
    )

    # One rollout per update (revision 0003, docs/rollouts.md): its policy and
    # where it stands. Every change is conditional on ``revision``.
    rollouts = Table(
        "rollouts",
        metadata,
        Column(
            "update_id",
            id_type(),
            ForeignKey(f"{prefix}updates.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        Column("state", String(24), nullable=False),
        Column("phases", json_type(), nullable=False),
        Column("phase_index", Integer(), nullable=False),
        Column("phase_opened_at", UTCDateTime(), nullable=True),
        Column("phase_soak_seconds", Integer(), nullable=False),
        Column("halt_failure_rate", Float(), nullable=False),
        Column("halt_min_devices", Integer(), nullable=False),
        Column("require_approval", Boolean(), nullable=False),
        Column("phase_approval", Boolean(), nullable=False),
        Column("awaiting_phase_approval", Boolean(), nullable=False),
        Column("halt_reason", Text(), nullable=True),
        Column("revision", Integer(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        CheckConstraint(_in("state", RolloutState), name="state"),
    )

    # Webhook subscriptions, events and their outbox (revision 0007, docs/webhooks.md).
    webhooks = define_webhook_tables(metadata, prefix, id_type(), UTCDateTime())

    # Wake-ups between the server processes on one SQLite file (revision 0008,
    # docs/architecture.md "Wake-ups"): each process reads the rows newer than the
    # last it saw; rows older than a minute are deleted. Unused on PostgreSQL
    # (LISTEN/NOTIFY). Ids are never reused, so no process skips a row.
    wakeups = Table(
        "wakeups",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("origin", String(32), nullable=False),
        Column("payload", Text(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )

    return Tables(
        metadata,
        devices,
        updates,
        device_updates,
        audit_log,
        enrollment_tokens,
        rollouts,
        webhooks,
        wakeups,
    )
