"""Errors as HTTP answers: every 4xx body is ``{"detail": "<what was wrong>"}``.

One table maps javia's error classes to status codes (the first class in an
error's MRO that is listed wins); request validation errors become 422 with
one readable line; an unexpected exception is a bug and becomes a logged 500
that reveals nothing. A client that goes away in the middle of its request
body (Ctrl-C during a publish) is one warning line, not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from javia_core.errors import (
    BackendError,
    ConflictError,
    InvalidTransitionError,
    JaviaError,
    ManifestError,
    NotFoundError,
    PackageError,
    ScheduleError,
    SignatureError,
    SigningKeyError,
    StorageRefusedError,
    StorageTooLargeError,
    VersionError,
)
from javia_core.input_rules import MAX_JSON_DEPTH
from javia_updates.backends.base import EnrollmentError
from javia_updates.server.uploads import UploadError, UploadTooLargeError
from javia_updates.service import InvalidRequestError

__all__ = ["STATUS_FOR_ERROR", "describe_validation_error", "install_error_handlers", "status_for"]

logger = logging.getLogger("javia.server")

#: javia error class → HTTP status.
STATUS_FOR_ERROR: Mapping[type[JaviaError], int] = {
    NotFoundError: 404,
    EnrollmentError: 401,
    ConflictError: 409,
    InvalidTransitionError: 409,
    VersionError: 422,
    ScheduleError: 422,
    ManifestError: 422,
    InvalidRequestError: 422,
    UploadError: 422,
    SignatureError: 400,
    PackageError: 400,
    UploadTooLargeError: 413,
    StorageTooLargeError: 413,
    SigningKeyError: 500,
    StorageRefusedError: 502,
    BackendError: 503,
    JaviaError: 400,
}


def status_for(error: JaviaError) -> int:
    """The HTTP status for ``error`` (most specific listed class wins)."""
    for cls in type(error).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return 400


def describe_validation_error(error: RequestValidationError, limit: int = 5) -> str:
    """One line naming each bad field and what was expected."""
    problems: list[str] = []
    for item in error.errors()[:limit]:
        location = [str(part) for part in item.get("loc", ())]
        kind = item.get("type", "")
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "json_invalid":
            problems.append(
                f"request body is not valid JSON ({item.get('ctx', {}).get('error', message)})"
            )
            continue
        where = ".".join(
            location[1:]
            if location and location[0] in ("body", "query", "path", "header")
            else location
        )
        source = location[0] if location else "request"
        if kind == "missing":
            problems.append(f"{source} field {where!r} is required")
        else:
            problems.append(
                f"{source} field {where!r}: {message}" if where else f"{source}: {message}"
            )
    more = len(error.errors()) - limit
    if more > 0:
        problems.append(f"and {more} more problems")
    return "; ".join(problems) or "invalid request"


def _unparsable_body(error: StarletteHTTPException) -> str | None:
    """The 422 ``detail`` for a JSON body the parser itself gave up on, else None.

    FastAPI answers a body that :func:`json.loads` cannot read for a reason
    other than a syntax error with a bare 400 "There was an error parsing the
    body": invalid UTF-8, nesting deeper than the interpreter's recursion
    limit, an integer of thousands of digits. Say which.
    """
    cause = error.__cause__
    if error.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        reason = f"it is nested too deeply to parse (at most {MAX_JSON_DEPTH} levels are accepted)"
    elif isinstance(cause, UnicodeError):
        reason = "it is not valid UTF-8"
    elif isinstance(cause, ValueError):
        reason = str(cause).split(";")[0].split(":")[0][:200] or "it cannot be parsed"
    else:
        return None
    return f"request body is not valid JSON: {reason}; expected a JSON object"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(JaviaError)
    async def _javia_error(request: Request, error: JaviaError) -> JSONResponse:
        code = status_for(error)
        if code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, error)
            # 502/503: the blob store's or database's own words help the operator
            # (they never hold a key); a 500 is a bug and reveals nothing.
            detail = str(error) if code in (502, 503) else "internal server error"
            return JSONResponse({"detail": detail}, status_code=code)
        return JSONResponse({"detail": str(error)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_error(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        unparsable = _unparsable_body(error)
        if unparsable is not None:
            return JSONResponse({"detail": unparsable}, status_code=422)
        detail = error.detail
        if error.status_code == 404 and detail == "Not Found":  # no route matched the path
            detail = f"no route {request.method} {request.url.path}: see /docs"
        return JSONResponse(
            {"detail": detail},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
        # Ctrl-C during an upload: nothing to answer, nothing was kept (the
        # upload discards its temporary file); one line, no traceback.
        client = request.client.host if request.client else "unknown client"
        logger.warning(
            "%s %s: %s disconnected before the request body was complete; nothing was stored",
            request.method,
            request.url.path,
            client,
        )
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed unexpectedly", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
