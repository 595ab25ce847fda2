"""Webhooks: subscriptions, events, the delivery outbox and every attempt (docs/webhooks.md).

Revision ID: 0007
Revises: 0009
Create Date: 2026-12-07

Four new tables, nothing else changes (plain CREATE TABLE on every database):
``webhooks``, ``webhook_events``, ``webhook_deliveries`` (one row per
webhook and event: the outbox the delivery task claims with a lease) and
``webhook_attempts``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from javia_updates.backends.schema import UTCDateTime, id_type

revision = "0007"
down_revision = "0009"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get("javia_schema")


def upgrade() -> None:
    schema = _schema()
    prefix = f"{schema}." if schema else ""
    op.create_table(
        "webhooks",
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_webhook_events_event_id")),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("webhook_id", id_type(), nullable=False),
        sa.Column("event_row_id", id_type(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            [f"{prefix}webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_row_id"],
            [f"{prefix}webhook_events.id"],
            name=op.f("fk_webhook_deliveries_event_row_id_webhook_events"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_state")
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_deliveries_state_next_attempt_at",
        "webhook_deliveries",
        ["state", "next_attempt_at"],
        schema=schema,
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_id",
        "webhook_deliveries",
        ["webhook_id", "id"],
        schema=schema,
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("delivery_id", id_type(), nullable=False),
        sa.Column("attempted_at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            [f"{prefix}webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        schema=schema,
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"], schema=schema
    )


def downgrade() -> None:
    schema = _schema()
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_events", "webhooks"):
        op.drop_table(table, schema=schema)
