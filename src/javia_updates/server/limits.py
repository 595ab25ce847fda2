"""Request limits: body size (413) and heartbeat rate (429 with ``Retry-After``).

Two guards against a client, authenticated or not, that wants to exhaust the
server (docs/security.md, "Limits"):

- :class:`RequestBodyLimitMiddleware` refuses a request body above its limit
  with 413 and a ``detail`` naming the limit: at once from ``Content-Length``
  (before any byte is read or any credential checked), and while streaming
  when the body is chunked. A publish (``POST /api/v1/updates/``) may be as
  large as ``max_upload_bytes``; every other request ``max_request_body_bytes``.
- :class:`HeartbeatRateLimiter` is a token bucket per device: ``burst``
  heartbeats at once, refilled at ``burst`` per heartbeat interval. A device
  heartbeating far faster than it was told gets 429 and ``Retry-After``
  (RFC 9110 section 10.2.3, whole seconds). The count lives in the process's
  memory: each server replica keeps its own, so behind a load balancer a
  device may send up to ``burst`` per replica; a restart forgets it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection
from datetime import datetime

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "HeartbeatRateLimiter",
    "RequestBodyLimitMiddleware",
    "body_limit_message",
    "get_heartbeat_limiter",
    "limit_heartbeat",
]


def body_limit_message(limit: int, declared: int | None = None) -> str:
    """The 413 ``detail``: what was sent (if known) and the limit in bytes."""
    shown = f"{limit} bytes ({limit / 1024**2:.2f} MiB)"
    if declared is not None:
        return f"request body of {declared} bytes exceeds the limit of {shown}"
    return f"request body exceeds the limit of {shown}"


class RequestBodyLimitMiddleware:
    """ASGI middleware: 413 for request bodies above the limit.

    Args:
        app: the wrapped application.
        max_bytes: limit for every request body, in bytes.
        upload_max_bytes: limit for ``POST`` to one of ``upload_paths``.
        upload_paths: paths of the package upload route (with and without
            trailing slash).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        upload_max_bytes: int,
        upload_paths: Collection[str],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes
        self.upload_paths = frozenset(upload_paths)

    def _limit_for(self, scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path") in self.upload_paths:
            return self.upload_max_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope)
        declared: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                declared = int(text) if text.isascii() and text.isdigit() else None
                break
        if declared is not None and declared > limit:
            response = JSONResponse(
                {"detail": body_limit_message(limit, declared)},
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException met while reading the
                    # body; the app's handler turns it into {"detail": ...}.
                    raise HTTPException(413, body_limit_message(limit))
            return message

        await self.app(scope, limited_receive, send)


class HeartbeatRateLimiter:
    """A token bucket per device, in memory (thread-safe).

    Args:
        burst: heartbeats a device may send at once (the bucket's size); 0
            turns the limit off.
        interval_seconds: the heartbeat interval devices are told, in seconds;
            the bucket refills ``burst`` tokens per interval.
        sweep_every: after this many calls, forget devices whose bucket is
            full again (they are the same as devices never seen).
    """

    def __init__(self, *, burst: int, interval_seconds: float, sweep_every: int = 4096) -> None:
        self.burst = burst
        self.interval_seconds = interval_seconds
        self._rate = burst / interval_seconds if burst else 0.0
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._sweep_every = sweep_every

    def acquire(self, device_id: int, now: datetime) -> float | None:
        """Take one heartbeat from ``device_id``'s bucket at ``now``.

        Args:
            device_id: the device's row id.
            now: the server's clock (aware UTC). A clock that steps back
                refills nothing and is not held against the device.

        Returns:
            None if the heartbeat may proceed, else the seconds until it may.
        """
        if not self.burst:
            return None
        at = now.timestamp()
        with self._lock:
            self._calls += 1
            if self._calls % self._sweep_every == 0:
                self._sweep(at)
            tokens, last = self._buckets.get(device_id, (float(self.burst), at))
            tokens = min(float(self.burst), tokens + max(0.0, at - last) * self._rate)
            if tokens < 1.0:
                self._buckets[device_id] = (tokens, max(at, last))
                return (1.0 - tokens) / self._rate
            self._buckets[device_id] = (tokens - 1.0, max(at, last))
            return None

    def _sweep(self, at: float) -> None:
        full_after = self.interval_seconds
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + max(0.0, at - last) * self._rate >= self.burst or at - last >= full_after:
                del self._buckets[key]

    def __len__(self) -> int:
        """How many devices are tracked right now."""
        return len(self._buckets)


def get_heartbeat_limiter(request: Request) -> HeartbeatRateLimiter:
    """The application's heartbeat limiter."""
    limiter: HeartbeatRateLimiter = request.app.state.heartbeat_limiter
    return limiter


def limit_heartbeat(limiter: HeartbeatRateLimiter, device_id: int, now: datetime) -> None:
    """Raise 429 with ``Retry-After`` if ``device_id`` heartbeats too fast.

    Raises:
        HTTPException: 429; ``detail`` names the allowance, ``Retry-After`` the
            whole seconds to wait (at least 1).
    """
    wait = limiter.acquire(device_id, now)
    if wait is None:
        return
    seconds = max(1, math.ceil(wait))
    raise HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"heartbeats too frequent: at most {limiter.burst} per {limiter.interval_seconds:g} s "
        f"heartbeat interval; retry after {seconds} s",
        headers={"Retry-After": str(seconds)},
    )
