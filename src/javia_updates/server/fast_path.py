"""The heartbeat's fast path: plain ASGI in front of the FastAPI application (issue 7).

Every device sends a heartbeat per interval, so it is the request a server
answers most. Through FastAPI it pays for the middleware stack, matching
every route, and dependency injection — together more than the answer
itself, which comes from memory (:mod:`javia_updates.backends.cache`).
:class:`HeartbeatFastPath` answers the ordinary heartbeat directly:

``POST /api/v1/devices/{uuid}/heartbeat`` with ``Authorization: Bearer``,
a JSON body (or none) within ``max_request_body_bytes``, a token of that
very device, a body that validates, a device within its rate limit, and an
answer that needs no database write.

Anything else — a missing, unknown or foreign token, a bad or oversized
body, a refused rate, a reconciliation to write, a store whose reads are
not local — goes on to the FastAPI route with the request body replayed,
so every error is produced in one place, by the documented route. The
answer of the fast path is byte for byte the route's: the same
:class:`~javia_core.models.HeartbeatResponse` JSON, status 200.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from javia_core.errors import JaviaError
from javia_core.models import HeartbeatRequest
from javia_updates.server.limits import HeartbeatRateLimiter
from javia_updates.service import API_PREFIX, UpdateService

__all__ = ["ADMITTED_SCOPE_KEY", "HeartbeatFastPath"]

logger = logging.getLogger(__name__)

#: Set in the ASGI scope when the fast path already took the heartbeat from the
#: device's rate-limit bucket before handing the request on to the route.
ADMITTED_SCOPE_KEY = "javia.heartbeat_admitted"

_PATH = re.compile(rf"^{re.escape(API_PREFIX)}/devices/([0-9A-Fa-f-]{{32,36}})/heartbeat$")
_JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class HeartbeatFastPath:
    """ASGI middleware answering ordinary heartbeats without FastAPI (see the module docstring).

    Args:
        app: the FastAPI application (everything else, and every fallback).
        service: the application's service.
        limiter: the per-device heartbeat rate limiter.
        clock: the application's clock (aware UTC).
        max_body_bytes: the request body limit (``max_request_body_bytes``).

    Attributes:
        served: heartbeats answered here (for tests and curiosity).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: UpdateService,
        limiter: HeartbeatRateLimiter,
        clock: Callable[[], datetime],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.service = service
        self.limiter = limiter
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.match(scope["path"])
        if match is None or not self.service.store.local_reads:
            await self.app(scope, receive, send)
            return
        token, content_type, declared = _headers(scope)
        if token is None or (declared is not None and declared > self.max_body_bytes):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the application see it
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes or not message.get("more_body", False):
                break
        answer = None
        if messages[-1]["type"] == "http.request" and len(body) <= self.max_body_bytes:
            try:
                answer = self._answer(scope, match.group(1), token, content_type, body)
            except Exception:  # a bug: the route answers (and its handler logs a 500)
                logger.exception("heartbeat fast path failed; handing the request to the route")
                scope[ADMITTED_SCOPE_KEY] = True
        if answer is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        self.served += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(answer)).encode("ascii")),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _answer(
        self, scope: Scope, path_uuid: str, token: str, content_type: bytes | None, body: bytes
    ) -> bytes | None:
        """The heartbeat's answer, or None to hand the request to the route."""
        try:
            device_uuid = uuid.UUID(path_uuid)
        except ValueError:
            return None
        service = self.service
        try:
            device = service.authenticate_device(token)
            if device is None or device.device_uuid != device_uuid:
                return None
            if not body.strip():
                report = HeartbeatRequest()
            elif content_type is None or content_type.lower() in _JSON_TYPES:
                report = HeartbeatRequest.model_validate_json(body)
            else:
                return None
        except (JaviaError, ValidationError):
            return None
        now = self.clock()
        if self.limiter.acquire(device.id, now) is not None:
            return None  # nothing taken: the route answers 429 with Retry-After
        try:
            response = service.heartbeat_without_writes(device, report, now=now)
        except JaviaError:
            response = None
        if response is None:
            scope[ADMITTED_SCOPE_KEY] = True  # this heartbeat was counted already
            return None
        return response.model_dump_json().encode("utf-8")


def _headers(scope: Scope) -> tuple[str | None, bytes | None, int | None]:
    """``(bearer token, content type, content length)`` from the request headers."""
    token = content_type = declared = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                token = credentials.strip()
        elif name == b"content-type":
            content_type = value
        elif name == b"content-length":
            text = value.decode("latin-1").strip()
            declared = int(text) if text.isascii() and text.isdigit() else None
    return token, content_type, declared


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the messages already read again, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
