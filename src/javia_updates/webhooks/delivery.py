"""The background task that delivers webhook events (docs/webhooks.md, "Delivery and retries").

Every ``webhook_poll_seconds`` the task claims due deliveries with a lease
(:meth:`WebhookStore.claim`), POSTs each signed event, and records the
attempt. A 2xx answer delivers it; anything else (another status, a
redirect, which is never followed, a timeout, a refused connection) is
retried after :func:`retry_delay` seconds, doubling from
``webhook_retry_seconds`` up to ``webhook_retry_max_seconds``, until the
next attempt would come more than ``webhook_give_up_seconds`` after the
event: then the delivery is ``failed`` (given up) and stays visible in
``javia webhooks deliveries``.

Receivers are untrusted: each attempt has one overall deadline
(``webhook_timeout_seconds``), at most :data:`MAX_RESPONSE_BYTES` of the
answer are read, no redirect is followed, no proxy or ``.netrc`` credential
of the environment is used, and URLs are shown without user info or query
(:func:`display_url`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from javia_core.errors import BackendError
from javia_updates.webhooks.events import signature_headers
from javia_updates.webhooks.outbox import AttemptRecord, Claim
from javia_updates.webhooks.store import WebhookStore

__all__ = [
    "MAX_RESPONSE_BYTES",
    "RetryPolicy",
    "WebhookDeliverer",
    "display_url",
    "next_state",
    "retry_delay",
]

logger = logging.getLogger(__name__)

#: Most bytes of a receiver's answer read (the start of it is kept as the error text).
MAX_RESPONSE_BYTES = 4096
#: Most deliveries one claim takes (each is attempted concurrently).
CLAIM_LIMIT = 32
_SHOWN_ERROR_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Timing of delivery attempts, in seconds (the ``webhook_*`` server settings)."""

    timeout_seconds: float = 10.0
    retry_seconds: float = 10.0
    retry_max_seconds: float = 3600.0
    give_up_seconds: float = 86_400.0

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds a delivery: twice the timeout and a second (then it is free again)."""
        return 2 * self.timeout_seconds + 1


def retry_delay(attempts: int, policy: RetryPolicy) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (1, 2, ...): doubling, capped."""
    return float(min(policy.retry_seconds * 2 ** max(attempts - 1, 0), policy.retry_max_seconds))


def next_state(
    attempts: int, created_at: datetime, now: datetime, policy: RetryPolicy
) -> tuple[str, datetime | None]:
    """After ``attempts`` failed attempts at ``now``: ``("pending", retry at)`` or ``("failed", None)``.

    Given up when the next attempt would come more than ``give_up_seconds``
    after the delivery was created (the event's time).
    """
    retry_at = now + timedelta(seconds=retry_delay(attempts, policy))
    if (retry_at - created_at).total_seconds() > policy.give_up_seconds:
        return "failed", None
    return "pending", retry_at


def display_url(url: str) -> str:
    """``url`` without user info, query or fragment: what logs and tables show.

    The host and path are shown as they are sent (IPv6 hosts in brackets,
    the path still percent-encoded), so the text is the URL that is called
    and never holds a control character.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    netloc = parsed.netloc.decode("ascii", errors="replace")
    path = parsed.raw_path.decode("ascii", errors="replace").partition("?")[0]
    query = "?…" if parsed.query else ""
    return f"{parsed.scheme}://{netloc}{path}{query}"


def _printable(text: str) -> str:
    cleaned = "".join(char if char.isprintable() else " " for char in text)
    return cleaned[:_SHOWN_ERROR_CHARS]


class WebhookDeliverer:
    """Claims, POSTs and records deliveries (module docstring).

    Args:
        store: the webhook tables.
        policy: timeouts and retry timing.
        clock: the server's clock (aware UTC).
        poll_seconds: pause when nothing was due.
        transport: an ``httpx`` transport for tests (default: real connections).
    """

    def __init__(
        self,
        store: WebhookStore,
        policy: RetryPolicy,
        *,
        clock: Callable[[], datetime],
        poll_seconds: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.transport = transport

    def client(self) -> httpx.AsyncClient:
        """The HTTP client: no redirects, no environment proxies or credentials."""
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.policy.timeout_seconds),
            transport=self.transport,
        )

    async def run_forever(self) -> None:
        """Deliver until cancelled; a database error is logged and retried after a pause."""
        async with self.client() as client:
            while True:
                try:
                    claimed = await self.run_once(client)
                except BackendError as error:
                    logger.warning("webhook delivery paused (the next round retries): %s", error)
                    claimed = 0
                except Exception:  # the task must outlive one bad round
                    logger.exception("webhook delivery failed (the next round retries)")
                    claimed = 0
                if not claimed:
                    await asyncio.sleep(self.poll_seconds)

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Claim the due deliveries and attempt each once; how many were claimed."""
        claims = await asyncio.to_thread(
            self.store.claim,
            now=self.clock(),
            lease_seconds=self.policy.lease_seconds,
            limit=CLAIM_LIMIT,
        )
        await asyncio.gather(*(self._deliver(client, claim) for claim in claims))
        return len(claims)

    async def _deliver(self, client: httpx.AsyncClient, claim: Claim) -> None:
        attempt = await self.attempt(client, claim)
        delivered = attempt.status_code is not None and 200 <= attempt.status_code < 300
        if delivered:
            state, retry_at = "delivered", None
        else:
            state, retry_at = next_state(
                claim.attempts + 1, claim.delivery_created_at, attempt.attempted_at, self.policy
            )
            logger.info(
                "webhook %s to %s not delivered (%s); %s",
                claim.event_type,
                display_url(claim.url),
                attempt.error,
                "retrying" if state == "pending" else "given up",
            )
        await asyncio.to_thread(
            self.store.record, claim, attempt, state=state, next_attempt_at=retry_at
        )

    async def attempt(self, client: httpx.AsyncClient, claim: Claim) -> AttemptRecord:
        """POST the event once, within the overall timeout; the attempt as recorded."""
        body = claim.body.encode("utf-8")
        headers = signature_headers(
            claim.secret,
            event_id=claim.event_id,
            event_type=claim.event_type,
            created_at=claim.event_created_at,
            body=body,
        )
        attempted_at = self.clock()
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.policy.timeout_seconds):
                async with client.stream(
                    "POST", claim.url, content=body, headers=headers
                ) as answer:
                    status_code = answer.status_code
                    start = b""
                    async for chunk in answer.aiter_raw():
                        start += chunk
                        if len(start) >= MAX_RESPONSE_BYTES:
                            break
            if 300 <= status_code < 400:
                error = f"HTTP {status_code}: redirects are not followed"
            elif not 200 <= status_code < 300:
                text = start[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").strip()
                error = _printable(f"HTTP {status_code}: {text}" if text else f"HTTP {status_code}")
        except TimeoutError:
            status_code = None
            error = f"no complete answer within {self.policy.timeout_seconds:g} s"
        except httpx.HTTPError as failure:
            status_code = None
            message = str(failure).replace(claim.url, display_url(claim.url))
            error = _printable(f"{type(failure).__name__}: {message}".rstrip(": "))
        return AttemptRecord(attempted_at, status_code, error, time.monotonic() - started)
