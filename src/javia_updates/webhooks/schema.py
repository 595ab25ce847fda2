"""The webhook tables (revision 0007, docs/webhooks.md): subscriptions, events, the outbox, attempts.

* ``webhooks``: one receiver: its URL, its HMAC secret (needed in clear to
  sign, like any webhook sender's) and the event types it subscribes to;
* ``webhook_events``: one event, its exact JSON body (every retry sends the
  same bytes, so a receiver can compare them);
* ``webhook_deliveries``: the outbox, one row per (webhook, event): state,
  attempts, when the next attempt is due and the lease of the process
  delivering it now;
* ``webhook_attempts``: every attempt: status code or error, duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = ["DELIVERY_STATES", "WebhookTables", "define_webhook_tables"]

#: A delivery's states: waiting for an attempt, delivered (2xx), given up.
DELIVERY_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class WebhookTables:
    """The four webhook tables of one schema."""

    webhooks: Table
    events: Table
    deliveries: Table
    attempts: Table


def define_webhook_tables(
    metadata: MetaData, prefix: str, id_type: Any, time_type: Any
) -> WebhookTables:
    """Define the webhook tables on ``metadata`` (``prefix``: ``"<schema>."`` or empty).

    ``id_type`` and ``time_type`` are :func:`~javia_updates.backends.schema.id_type`
    and :class:`~javia_updates.backends.schema.UTCDateTime` (passed in, so the
    schema module keeps the one definition of each).
    """
    ids = id_type
    webhooks = Table(
        "webhooks",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column("url", Text(), nullable=False),
        Column("secret", String(128), nullable=False),
        Column("events", Text(), nullable=False),  # JSON list of event types
        Column("created_at", time_type, nullable=False),
        sqlite_autoincrement=True,
    )
    events = Table(
        "webhook_events",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("type", String(64), nullable=False),
        Column("body", Text(), nullable=False),
        Column("created_at", time_type, nullable=False),
        UniqueConstraint("event_id"),
        sqlite_autoincrement=True,
    )
    deliveries = Table(
        "webhook_deliveries",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column(
            "webhook_id",
            ids,
            ForeignKey(f"{prefix}webhooks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column(
            "event_row_id",
            ids,
            ForeignKey(f"{prefix}webhook_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("state", String(16), nullable=False),
        Column("attempts", Integer(), nullable=False),
        Column("next_attempt_at", time_type, nullable=False),
        Column("lease_until", time_type, nullable=True),
        Column("created_at", time_type, nullable=False),
        Column("finished_at", time_type, nullable=True),
        Column("last_status_code", Integer(), nullable=True),
        Column("last_error", Text(), nullable=True),
        CheckConstraint(
            "state IN (" + ", ".join(f"'{state}'" for state in DELIVERY_STATES) + ")",
            name="state",
        ),
        Index(None, "state", "next_attempt_at"),
        Index(None, "webhook_id", "id"),
        sqlite_autoincrement=True,
    )
    attempts = Table(
        "webhook_attempts",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column(
            "delivery_id",
            ids,
            ForeignKey(f"{prefix}webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("attempted_at", time_type, nullable=False),
        Column("status_code", Integer(), nullable=True),
        Column("error", Text(), nullable=True),
        Column("duration_seconds", Float(), nullable=False),
        Index(None, "delivery_id"),
        sqlite_autoincrement=True,
    )
    return WebhookTables(webhooks, events, deliveries, attempts)
