"""Webhooks (operator): ``/api/v1/webhooks`` — add, list, remove, test, deliveries (docs/webhooks.md)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from javia_updates.server.auth import Caller, get_now, require_admin
from javia_updates.service import MAX_DATABASE_INTEGER
from javia_updates.webhooks.delivery import display_url
from javia_updates.webhooks.events import new_secret
from javia_updates.webhooks.models import (
    DeliveryOut,
    TestEventOut,
    WebhookCreated,
    WebhookOut,
    WebhookRequest,
)
from javia_updates.webhooks.outbox import WebhookRecord
from javia_updates.webhooks.store import WebhookStore

__all__ = ["router"]

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

Now = Annotated[datetime, Depends(get_now)]
Admin = Annotated[Caller, Depends(require_admin)]
WebhookId = Annotated[int, Path(ge=1, le=MAX_DATABASE_INTEGER, description="the webhook's id")]


def _store(request: Request) -> WebhookStore:
    store: WebhookStore = request.app.state.webhooks
    return store


Store = Annotated[WebhookStore, Depends(_store)]


def _out(record: WebhookRecord) -> WebhookOut:
    values = asdict(record)
    values.pop("secret")
    values["url"] = display_url(record.url)
    return WebhookOut(**values)


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
def add_webhook(body: WebhookRequest, store: Store, now: Now, _: Admin) -> WebhookCreated:
    """Add a webhook; the answer holds its signing secret, shown this once."""
    record = store.add(body.url, body.events, new_secret(), now=now)
    assert record.secret is not None
    return WebhookCreated(**_out(record).model_dump(), secret=record.secret)


@router.get("/", response_model=list[WebhookOut])
def list_webhooks(store: Store, _: Admin) -> list[WebhookOut]:
    """Every webhook with its deliveries counted by state."""
    return [_out(record) for record in store.webhooks()]


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_webhook(webhook_id: WebhookId, store: Store, _: Admin) -> Response:
    """Remove a webhook and its deliveries; 404 if there is none."""
    store.remove(webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/test", status_code=status.HTTP_202_ACCEPTED, response_model=TestEventOut
)
def test_webhook(webhook_id: WebhookId, store: Store, now: Now, _: Admin) -> TestEventOut:
    """Queue a ``webhook.test`` event for this webhook (delivered like any other)."""
    return TestEventOut(event_id=store.enqueue_test(webhook_id, now=now))


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    store: Store,
    _: Admin,
    webhook_id: Annotated[int | None, Query(ge=1, le=MAX_DATABASE_INTEGER)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[DeliveryOut]:
    """The newest deliveries (of one webhook, or all), newest first, each with its attempts."""
    return [
        DeliveryOut.model_validate(asdict(record))
        for record in store.deliveries(webhook_id=webhook_id, limit=limit)
    ]
