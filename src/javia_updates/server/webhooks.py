"""The server's webhook delivery task, built from the settings (docs/webhooks.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from javia_core.errors import BackendError
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings
from javia_updates.webhooks.delivery import RetryPolicy, WebhookDeliverer
from javia_updates.webhooks.store import WebhookStore

__all__ = ["webhook_deliverer"]


def webhook_deliverer(
    service: UpdateService, settings: ServerSettings, clock: Callable[[], datetime]
) -> WebhookDeliverer:
    """The delivery task over the service's store, timed by the ``webhook_*`` settings.

    Raises:
        BackendError: the store is not an SQL store (webhooks live in its tables).
    """
    store = service.store
    if not isinstance(store, SQLStoreBase):
        raise BackendError("webhooks need the SQL store (SQLite or PostgreSQL)")
    policy = RetryPolicy(
        timeout_seconds=settings.webhook_timeout_seconds,
        retry_seconds=settings.webhook_retry_seconds,
        retry_max_seconds=settings.webhook_retry_max_seconds,
        give_up_seconds=settings.webhook_give_up_seconds,
    )
    return WebhookDeliverer(
        WebhookStore(store), policy, clock=clock, poll_seconds=settings.webhook_poll_seconds
    )
