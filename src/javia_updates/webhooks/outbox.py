"""The durable webhook outbox in the database (docs/webhooks.md, "Delivery").

:func:`enqueue` runs inside the transaction of the change that causes an
event (called with its audit line, :meth:`SQLStoreBase._audit`): the event
and one delivery row per subscribed webhook commit with the change or not at
all, so a crash right after a change cannot lose its event and a rolled-back
change sends none.

:class:`~javia_updates.webhooks.store.WebhookStore` is the rest: the webhooks themselves, the delivery
task's claims and attempts, and the views of ``javia webhooks``. A claim
sets ``lease_until`` with a conditional ``UPDATE`` (the row must still be
pending and unleased, or its lease expired), so two processes or replicas
never both hold a delivery; a process killed mid-delivery leaves a lease
that expires, and another claim (after a restart, or by another worker)
delivers the event again: at least once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select

from javia_updates.backends.records import AuditEntry
from javia_updates.backends.schema import Tables
from javia_updates.webhooks.events import (
    WebhookEvent,
    event_body,
    event_for_audit,
    new_event_id,
)

__all__ = [
    "AttemptRecord",
    "Claim",
    "DeliveryRecord",
    "WebhookRecord",
    "enqueue",
    "store_event",
]


@dataclass(frozen=True)
class WebhookRecord:
    """A stored webhook; ``secret`` is only filled right after it was created."""

    id: int
    url: str
    events: tuple[str, ...]
    created_at: datetime
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    secret: str | None = None


@dataclass(frozen=True)
class Claim:
    """A delivery this process holds until ``lease_until``: everything one attempt needs."""

    delivery_id: int
    lease_until: datetime
    url: str
    secret: str
    event_id: str
    event_type: str
    body: str
    event_created_at: datetime
    delivery_created_at: datetime
    attempts: int


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt: when, the answer's status code or the error, how long (seconds)."""

    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_seconds: float


@dataclass(frozen=True)
class DeliveryRecord:
    """One event for one webhook and its attempts (oldest first)."""

    id: int
    webhook_id: int
    event_id: str
    event_type: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: tuple[AttemptRecord, ...]


def enqueue(connection: Connection, tables: Tables, entry: AuditEntry, now: datetime) -> None:
    """Store the event of ``entry`` (if it is one) for every webhook subscribed to it.

    Runs in the caller's transaction. Nothing is written when no webhook
    subscribes (one small query over ``webhooks``).
    """
    event = event_for_audit(entry)
    if event is None:
        return
    w = tables.webhooks.webhooks
    subscribers = [
        webhook_id
        for webhook_id, events in connection.execute(select(w.c.id, w.c.events))
        if event.type in json.loads(events)
    ]
    if subscribers:
        store_event(connection, tables, event, subscribers, now)


def store_event(
    connection: Connection,
    tables: Tables,
    event: WebhookEvent,
    webhook_ids: Sequence[int],
    now: datetime,
) -> str:
    event_id = new_event_id()
    events, deliveries = tables.webhooks.events, tables.webhooks.deliveries
    row_id = connection.execute(
        insert(events).returning(events.c.id),
        {
            "event_id": event_id,
            "type": event.type,
            "body": event_body(event_id, event, now),
            "created_at": now,
        },
    ).scalar_one()
    connection.execute(
        insert(deliveries),
        [
            {
                "webhook_id": webhook_id,
                "event_row_id": row_id,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "lease_until": None,
                "created_at": now,
            }
            for webhook_id in webhook_ids
        ],
    )
    return event_id
