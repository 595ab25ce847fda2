"""A cap on concurrent package downloads (503 with ``Retry-After``) and their byte counts.

Package bytes are the server's heaviest answers: the archive
(``GET /api/v1/updates/{ref}/download``), per-file objects
(``GET /api/v1/objects/{sha256}``) and patches
(``GET /api/v1/patches/{base}/{target}``). :class:`DownloadSlotsMiddleware`
lets at most ``max_concurrent_downloads`` of them stream at once; one more
is answered 503 with ``Retry-After: <download_busy_retry_seconds>``
(RFC 9110 section 15.6.4 and 10.2.3) before routing, authentication or any
storage read. The agent waits that long plus jitter and asks again
(docs/agent.md, "Bandwidth"). A slot is held until the answer's last byte
is sent or the client goes away.

The count lives in the process's memory, like the heartbeat limit: each
server process (replica or worker) admits its own ``max_concurrent_downloads``.
The middleware also counts requests, refusals and body bytes sent per kind,
for ``GET /api/v1/downloads/stats`` (admin).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DownloadCounters", "DownloadSlotsMiddleware", "download_kind"]


def download_kind(path: str, api_prefix: str) -> str | None:
    """``"archive"``, ``"objects"``, ``"patches"`` for a package download path, else ``None``."""
    if not path.startswith(api_prefix + "/"):
        return None
    rest = path[len(api_prefix) + 1 :]
    if rest.startswith("objects/"):
        return "objects"
    if rest.startswith("patches/"):
        return "patches"
    if rest.startswith("updates/") and rest.endswith("/download"):
        return "archive"
    return None


@dataclass
class DownloadCounters:
    """What the downloads cost since the process started (bytes are body bytes sent)."""

    in_flight: int = 0
    refused: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, object]:
        """The counters as JSON-ready data."""
        with self._lock:
            return {
                "in_flight": self.in_flight,
                "refused": self.refused,
                "requests": dict(self.requests),
                "bytes": dict(self.bytes),
            }


class DownloadSlotsMiddleware:
    """ASGI middleware: at most ``limit`` package downloads at once (0: no cap); counts bytes.

    Args:
        app: the wrapped application.
        limit: concurrent downloads admitted by this process; 0 turns the cap off.
        retry_after_seconds: the ``Retry-After`` of a refused download, in whole seconds.
        api_prefix: ``/api/v1``.
        counters: where the counts go (shared with the stats route).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        retry_after_seconds: int,
        api_prefix: str,
        counters: DownloadCounters,
    ) -> None:
        self.app = app
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        self.api_prefix = api_prefix
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            kind = download_kind(scope.get("path", ""), self.api_prefix)
        if kind is None:
            await self.app(scope, receive, send)
            return
        counters = self.counters
        with counters._lock:
            admitted = self.limit <= 0 or counters.in_flight < self.limit
            if admitted:
                counters.in_flight += 1
                counters.requests[kind] = counters.requests.get(kind, 0) + 1
            else:
                counters.refused += 1
        if not admitted:
            await self._busy(send)
            return
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            with counters._lock:
                counters.in_flight -= 1
                counters.bytes[kind] = counters.bytes.get(kind, 0) + sent

    async def _busy(self, send: Send) -> None:
        body = json.dumps(
            {
                "detail": f"the server is serving {self.limit} package downloads at once "
                f"(max_concurrent_downloads); try again in {self.retry_after_seconds} s"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(self.retry_after_seconds).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
