"""Webhook events: their names, which change causes each, their JSON bodies and signatures.

Pure (no I/O). Every change javia makes writes an audit line in the same
transaction (:meth:`SQLStoreBase._audit`); :func:`event_for_audit` says
which of those lines is a webhook event and with what ``data``, so the event
is written in the very transaction of its change (docs/webhooks.md lists
every event and its payload).

A delivery is ``POST``ed with the exact bytes of :func:`event_body` (the
same on every retry) and the headers of :func:`signature_headers`:
``X-Javia-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed
with the webhook's secret; ``X-Javia-Event-Id``, the body's ``id``, for
dropping duplicates (delivery is at least once); ``X-Javia-Timestamp``, the
body's ``created_at`` in Unix seconds. Both are inside the signed body too,
so a receiver that keeps the ids it has seen for the give-up time (plus a
margin) and refuses events older than that rejects every replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store imports this module: no import of the backends at run time
    from javia_updates.backends.records import AuditEntry

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "TEST_EVENT",
    "WebhookEvent",
    "event_body",
    "event_for_audit",
    "new_secret",
    "signature",
    "signature_headers",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Javia-Signature"
TIMESTAMP_HEADER = "X-Javia-Timestamp"
EVENT_ID_HEADER = "X-Javia-Event-Id"
EVENT_TYPE_HEADER = "X-Javia-Event"

#: ``javia webhooks test``: sent to one webhook whatever it subscribes to.
TEST_EVENT = "webhook.test"

#: Rollout audit actions (``rollout.<RolloutEvent>``) and their event names.
_ROLLOUT_EVENTS = {
    "rollout.pause": "rollout.paused",
    "rollout.resume": "rollout.resumed",
    "rollout.cancel": "rollout.cancelled",
    "rollout.halt": "rollout.halted",
    "rollout.complete": "rollout.completed",
    "rollout.approve": "rollout.approved",
    "rollout.advance": "rollout.advanced",
    "rollout.awaits_approval": "rollout.awaiting_approval",
}

#: Device status reports that are events: the report's status -> the event.
_DEVICE_STATUS_EVENTS = {"failed": "device.failed", "rolled_back": "device.rolled_back"}

#: Every event a webhook may subscribe to (docs/webhooks.md).
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "update.published",
        *_ROLLOUT_EVENTS.values(),
        *_DEVICE_STATUS_EVENTS.values(),
        "device.registered",
        "device.regressed",
    }
)


@dataclass(frozen=True)
class WebhookEvent:
    """An event before it is stored: its type and ``data`` (JSON values)."""

    type: str
    data: dict[str, Any]


def event_for_audit(entry: AuditEntry) -> WebhookEvent | None:
    """The webhook event of an audit line, or None if that change is no event.

    The ``data`` of each event (docs/webhooks.md): ``update.published``:
    version, update_type, devices (rows created), rollout (state and
    phases); ``rollout.*``: update_id, version, reason, from, to, phase,
    actor; ``device.failed`` / ``device.rolled_back``: device_uuid,
    update_id, version, status, error_message (and ``failure`` when the
    report carries one); ``device.registered``: device_uuid, device_name,
    tags, actor; ``device.regressed``: device_uuid, update_id, version, reason.
    """
    details = entry.details
    action = entry.action
    keys: tuple[str, ...]
    if action == "update.publish":
        keys = ("version", "update_type", "devices", "rollout")
        return WebhookEvent("update.published", _pick(details, keys, actor=entry.actor))
    if action in _ROLLOUT_EVENTS:
        keys = ("update_id", "version", "reason", "from", "to", "phase")
        return WebhookEvent(_ROLLOUT_EVENTS[action], _pick(details, keys, actor=entry.actor))
    if action == "device_update.status":
        event = _DEVICE_STATUS_EVENTS.get(str(details.get("to")))
        if event is None:
            return None
        data = _pick(details, ("update_id", "version", "error_message"))
        data["status"] = details.get("to")
        data["device_uuid"] = entry.actor.removeprefix("device:")
        if "failure" in details:
            data["failure"] = details["failure"]
        return WebhookEvent(event, data)
    if action == "device.register":
        keys = ("device_uuid", "device_name", "tags")
        return WebhookEvent("device.registered", _pick(details, keys, actor=entry.actor))
    if action == "device_update.regressed":
        keys = ("device_uuid", "update_id", "version", "reason")
        return WebhookEvent("device.regressed", _pick(details, keys))
    return None


def _pick(details: dict[str, Any], keys: tuple[str, ...], **more: Any) -> dict[str, Any]:
    data = {key: details.get(key) for key in keys}
    data.update(more)
    return data


def event_body(event_id: str, event: WebhookEvent, created_at: datetime) -> str:
    """The JSON body POSTed to receivers: ``{"id", "type", "created_at", "data"}``.

    ``created_at`` is ISO 8601 UTC (when the change was made); keys sorted,
    no spaces, so the stored text is the exact body of every attempt.
    """
    return json.dumps(
        {
            "id": event_id,
            "type": event.type,
            "created_at": created_at.isoformat().replace("+00:00", "Z"),
            "data": event.data,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def new_event_id() -> str:
    """A fresh event id (a uuid4's text), the same on every retry of that event."""
    return str(uuid.uuid4())


def new_secret() -> str:
    """A webhook's signing secret: ``whsec_`` and 32 random bytes, URL-safe base64."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw ``body`` keyed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_headers(
    secret: str, *, event_id: str, event_type: str, created_at: datetime, body: bytes
) -> dict[str, str]:
    """The headers of every attempt at one event (module docstring)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "javia-webhooks/1",
        EVENT_ID_HEADER: event_id,
        EVENT_TYPE_HEADER: event_type,
        TIMESTAMP_HEADER: str(int(created_at.timestamp())),
        SIGNATURE_HEADER: signature(secret, body),
    }


def verify_signature(secret: str, *, header: str, body: bytes) -> bool:
    """A receiver's check, in constant time (docs/webhooks.md has it in a few lines to copy)."""
    return hmac.compare_digest(header.encode("ascii", "replace"), signature(secret, body).encode())
