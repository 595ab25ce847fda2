"""The webhook tables' reads and writes other than the outbox insert (see :mod:`.outbox`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from javia_core.errors import NotFoundError
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.webhooks.events import TEST_EVENT, WebhookEvent
from javia_updates.webhooks.outbox import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    WebhookRecord,
    store_event,
)

__all__ = ["WebhookStore"]


class WebhookStore:
    """The webhook tables of one SQL store (module docstring).

    Args:
        store: the server's SQL store (its engine, tables and transactions).
    """

    def __init__(self, store: SQLStoreBase) -> None:
        self.store = store
        self.tables = store.tables.webhooks

    # ------------------------------------------------------------------ webhooks
    def add(self, url: str, events: Sequence[str], secret: str, *, now: datetime) -> WebhookRecord:
        """Store a webhook; the record carries ``secret`` (shown once)."""
        w = self.tables.webhooks
        with self.store._write() as connection:
            webhook_id = connection.execute(
                insert(w).returning(w.c.id),
                {
                    "url": url,
                    "secret": secret,
                    "events": json.dumps(sorted(set(events))),
                    "created_at": now,
                },
            ).scalar_one()
        return WebhookRecord(webhook_id, url, tuple(sorted(set(events))), now, secret=secret)

    def webhooks(self) -> list[WebhookRecord]:
        """Every webhook, oldest first, with its deliveries counted by state."""
        w, d = self.tables.webhooks, self.tables.deliveries
        with self.store._read() as connection:
            hooks = connection.execute(
                select(w.c.id, w.c.url, w.c.events, w.c.created_at).order_by(w.c.id)
            ).all()
            counts = connection.execute(
                select(d.c.webhook_id, d.c.state, func.count()).group_by(d.c.webhook_id, d.c.state)
            ).all()
        by_hook: dict[int, dict[str, int]] = {}
        for webhook_id, state, count in counts:
            by_hook.setdefault(webhook_id, {})[state] = count
        return [
            WebhookRecord(
                row.id,
                row.url,
                tuple(json.loads(row.events)),
                row.created_at,
                pending=by_hook.get(row.id, {}).get("pending", 0),
                delivered=by_hook.get(row.id, {}).get("delivered", 0),
                failed=by_hook.get(row.id, {}).get("failed", 0),
            )
            for row in hooks
        ]

    def remove(self, webhook_id: int) -> None:
        """Delete a webhook with its deliveries and attempts.

        Raises:
            NotFoundError: no such webhook.
        """
        w, d, a = self.tables.webhooks, self.tables.deliveries, self.tables.attempts
        with self.store._write() as connection:
            delivery_ids = select(d.c.id).where(d.c.webhook_id == webhook_id)
            connection.execute(delete(a).where(a.c.delivery_id.in_(delivery_ids)))
            connection.execute(delete(d).where(d.c.webhook_id == webhook_id))
            if connection.execute(delete(w).where(w.c.id == webhook_id)).rowcount == 0:
                raise NotFoundError(f"no webhook {webhook_id}: see javia webhooks list")

    def enqueue_test(self, webhook_id: int, *, now: datetime) -> str:
        """Store a ``webhook.test`` event for this webhook alone; its event id.

        Raises:
            NotFoundError: no such webhook.
        """
        w = self.tables.webhooks
        event = WebhookEvent(TEST_EVENT, {"webhook_id": webhook_id, "message": "javia test event"})
        with self.store._write() as connection:
            if connection.execute(select(w.c.id).where(w.c.id == webhook_id)).first() is None:
                raise NotFoundError(f"no webhook {webhook_id}: see javia webhooks list")
            return store_event(connection, self.store.tables, event, [webhook_id], now)

    # ------------------------------------------------------------------ the delivery task
    def claim(self, *, now: datetime, lease_seconds: float, limit: int) -> list[Claim]:
        """Lease up to ``limit`` due deliveries until ``now + lease_seconds``.

        Due: pending, ``next_attempt_at <= now``, no lease or an expired one.
        Each row is taken by a conditional ``UPDATE`` (the same conditions):
        a row another process took in between is skipped. When nothing is
        due (the usual case) only a read looks, so an idle poll never takes
        the database's write lock.
        """
        w, e, d = self.tables.webhooks, self.tables.events, self.tables.deliveries
        lease_until = now + timedelta(seconds=lease_seconds)
        free = or_(d.c.lease_until.is_(None), d.c.lease_until <= now)
        due = and_(d.c.state == "pending", d.c.next_attempt_at <= now, free)
        claims: list[Claim] = []
        with self.store._read() as connection:  # the usual answer, without the write lock
            if connection.execute(select(d.c.id).where(due).limit(1)).first() is None:
                return claims
        with self.store._write() as connection:
            rows = connection.execute(
                select(
                    d.c.id,
                    d.c.attempts,
                    d.c.created_at,
                    w.c.url,
                    w.c.secret,
                    e.c.event_id,
                    e.c.type,
                    e.c.body,
                    e.c.created_at.label("event_created_at"),
                )
                .select_from(
                    d.join(w, d.c.webhook_id == w.c.id).join(e, d.c.event_row_id == e.c.id)
                )
                .where(due)
                .order_by(d.c.next_attempt_at, d.c.id)
                .limit(limit)
            ).all()
            for row in rows:
                taken = connection.execute(
                    update(d).where(d.c.id == row.id, due).values(lease_until=lease_until)
                ).rowcount
                if taken == 1:
                    claims.append(
                        Claim(
                            row.id,
                            lease_until,
                            row.url,
                            row.secret,
                            row.event_id,
                            row.type,
                            row.body,
                            row.event_created_at,
                            row.created_at,
                            row.attempts,
                        )
                    )
        return claims

    def record(
        self,
        claim: Claim,
        attempt: AttemptRecord,
        *,
        state: str,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Record an attempt and the delivery's new state; release the lease.

        ``state``: ``delivered``, ``failed`` (given up) or ``pending`` (retry
        at ``next_attempt_at``). The attempt is always recorded; the state
        only if this process still holds the lease (an expired lease may
        belong to another process now).

        Returns:
            Whether the state was written.
        """
        a, d = self.tables.attempts, self.tables.deliveries
        values: dict[str, Any] = {
            "state": state,
            "attempts": d.c.attempts + 1,
            "lease_until": None,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
        }
        if state == "pending" and next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        else:
            values["finished_at"] = attempt.attempted_at
        with self.store._write() as connection:
            connection.execute(
                insert(a),
                {
                    "delivery_id": claim.delivery_id,
                    "attempted_at": attempt.attempted_at,
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "duration_seconds": attempt.duration_seconds,
                },
            )
            written = connection.execute(
                update(d)
                .where(d.c.id == claim.delivery_id, d.c.lease_until == claim.lease_until)
                .values(**values)
            ).rowcount
        return bool(written == 1)

    # ------------------------------------------------------------------ views
    def deliveries(self, *, webhook_id: int | None, limit: int) -> list[DeliveryRecord]:
        """The newest ``limit`` deliveries (of one webhook, or all), newest first, with attempts.

        Raises:
            NotFoundError: ``webhook_id`` names no webhook.
        """
        e, d, a, w = (
            self.tables.events,
            self.tables.deliveries,
            self.tables.attempts,
            self.tables.webhooks,
        )
        query = (
            select(d, e.c.event_id, e.c.type)
            .select_from(d.join(e, d.c.event_row_id == e.c.id))
            .order_by(d.c.id.desc())
            .limit(limit)
        )
        if webhook_id is not None:
            query = query.where(d.c.webhook_id == webhook_id)
        with self.store._read() as connection:
            if (
                webhook_id is not None
                and connection.execute(select(w.c.id).where(w.c.id == webhook_id)).first() is None
            ):
                raise NotFoundError(f"no webhook {webhook_id}: see javia webhooks list")
            rows = connection.execute(query).all()
            ids = [row.id for row in rows]
            attempts = (
                connection.execute(select(a).where(a.c.delivery_id.in_(ids)).order_by(a.c.id)).all()
                if ids
                else []
            )
        log: dict[int, list[AttemptRecord]] = {}
        for row in attempts:
            log.setdefault(row.delivery_id, []).append(
                AttemptRecord(row.attempted_at, row.status_code, row.error, row.duration_seconds)
            )
        return [
            DeliveryRecord(
                id=row.id,
                webhook_id=row.webhook_id,
                event_id=row.event_id,
                event_type=row.type,
                state=row.state,
                attempts=row.attempts,
                created_at=row.created_at,
                next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
                finished_at=row.finished_at,
                last_status_code=row.last_status_code,
                last_error=row.last_error,
                attempt_log=tuple(log.get(row.id, ())),
            )
            for row in rows
        ]
