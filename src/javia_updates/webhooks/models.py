"""The webhook API's bodies (``/api/v1/webhooks``), shared by the routes and ``javia webhooks``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from javia_updates.webhooks.events import EVENT_TYPES

__all__ = [
    "MAX_URL_CHARS",
    "AttemptOut",
    "DeliveryOut",
    "TestEventOut",
    "WebhookCreated",
    "WebhookOut",
    "WebhookRequest",
    "check_webhook_url",
]

#: Longest webhook URL accepted, in characters.
MAX_URL_CHARS = 2000


def check_webhook_url(url: str) -> str:
    """``url`` if it is an absolute ``http``/``https`` URL with a host, else ValueError (one line).

    A port, when given, is 1-65535.

    Operator input: no whitespace or control characters, at most
    :data:`MAX_URL_CHARS` characters. User info (``user:pass@``) is allowed
    but never shown (tables and logs show :func:`~.delivery.display_url`).
    """
    import httpx

    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"the URL has {len(url)} characters: at most {MAX_URL_CHARS}")
    if any(not char.isprintable() or char.isspace() for char in url):
        raise ValueError("the URL contains spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ValueError(
            f"not a URL ({error}): expected e.g. https://example.com/hooks/javia"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            "expected an http:// or https:// URL with a host, e.g. https://example.com/hook"
        )
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(
            f"not a URL (invalid port {parsed.port}: expected 1-65535): "
            "expected e.g. https://example.com/hooks/javia"
        )
    return url


class WebhookRequest(BaseModel):
    """``POST /api/v1/webhooks/``: where to deliver and which events (at least one)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http:// or https:// receiver URL")
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - EVENT_TYPES)
        if unknown:
            raise ValueError(
                f"unknown event {unknown[0][:64]!r}: expected some of {', '.join(sorted(EVENT_TYPES))}"
            )
        return sorted(set(value))


class WebhookOut(BaseModel):
    """A webhook as listed: its URL without user info or query, its events, deliveries by state."""

    id: int
    url: str
    events: list[str]
    created_at: datetime
    pending: int = 0
    delivered: int = 0
    failed: int = 0


class WebhookCreated(WebhookOut):
    """The answer to creating a webhook: with its signing secret, shown this once."""

    secret: str


class TestEventOut(BaseModel):
    """``POST /api/v1/webhooks/{id}/test``: the queued test event's id."""

    event_id: str


class AttemptOut(BaseModel):
    """One delivery attempt: when (UTC), status code or error, duration in seconds."""

    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_seconds: float


class DeliveryOut(BaseModel):
    """One event for one webhook: state (pending, delivered, failed), attempts, the last outcome."""

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
    attempt_log: list[AttemptOut]
