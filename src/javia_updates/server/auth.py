"""Who is calling: the operator (admin API key) or one device (its bearer token).

DESIGN.md section 6: admin calls carry ``X-API-Key``, compared in constant time
(:func:`hmac.compare_digest`); devices carry ``Authorization: Bearer <token>``,
looked up by the token's SHA-256, and may touch only their own records. A
device token never opens an admin route (403), the admin key never acts as a
device (403): each side has its own credential. Registration also accepts an
enrollment token as ``Authorization: Bearer javia_enroll_...``
(:func:`require_admin_or_enrollment`); it opens nothing else. The full matrix
of routes and credentials is ``tests/security/test_authorization_matrix.py``.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from javia_updates.backends.base import DeviceRecord
from javia_updates.service import UpdateService, is_enrollment_token

__all__ = [
    "Caller",
    "Registrar",
    "ensure_same_device",
    "get_now",
    "get_service",
    "require_admin",
    "require_admin_or_device",
    "require_admin_or_enrollment",
    "require_device",
    "run_store_read",
]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="admin API key")
_bearer = HTTPBearer(auto_error=False, description="device token from registration")

ApiKey = Annotated[str | None, Depends(_api_key_header)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}

T = TypeVar("T")


# Dependencies are ``async def`` where they do no blocking I/O: FastAPI runs a
# plain ``def`` dependency in the thread pool, one thread hop per dependency
# per request, which cost more than the work of a device's request (issue 7).


async def get_service(request: Request) -> UpdateService:
    """The application's :class:`UpdateService`."""
    service: UpdateService = request.app.state.service
    return service


async def get_now(request: Request) -> datetime:
    """The application's clock (aware UTC; injectable for tests)."""
    now: datetime = request.app.state.clock()
    return now


async def run_store_read(service: UpdateService, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` on the event loop when the store's reads are local, else in the thread pool.

    SQLite reads on the same machine take tens of microseconds, less than a
    thread hop; a network database (PostgreSQL, Supabase) must not block the
    event loop.
    """
    if service.store.local_reads:
        return read(*args)
    return await run_in_threadpool(read, *args)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the operator (``device`` None) or one device."""

    device: DeviceRecord | None

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the admin API key."""
        return self.device is None


def _check_admin_key(request: Request, presented: str) -> None:
    expected: str = request.app.state.api_key
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key in X-API-Key")


def _unknown_token() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "invalid device token: expected 'Authorization: Bearer <token from registration>'",
        headers=_BEARER_CHALLENGE,
    )


async def _device_for(request: Request, token: str) -> DeviceRecord | None:
    """The device holding ``token``: from the device cache, else the store (see :func:`run_store_read`)."""
    service: UpdateService = request.app.state.service
    device = service.cached_device(token)
    if device is None:
        device = await run_store_read(service, service.authenticate_device, token)
    return device


async def require_admin(request: Request, api_key: ApiKey, bearer: Bearer) -> Caller:
    """Admin routes: a valid ``X-API-Key``; a device token alone is refused with 403."""
    if api_key is None:
        if bearer is not None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "this route is for operators: devices cannot use it"
            )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header with the admin API key"
        )
    _check_admin_key(request, api_key)
    return Caller(device=None)


def _device_credentials(
    api_key: str | None, bearer: HTTPAuthorizationCredentials | None
) -> HTTPAuthorizationCredentials:
    if bearer is None:
        if api_key is not None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "this route is for the device itself: send its token as 'Authorization: Bearer <token>'",
            )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing device token: expected 'Authorization: Bearer <token from registration>'",
            headers=_BEARER_CHALLENGE,
        )
    return bearer


async def require_device(request: Request, api_key: ApiKey, bearer: Bearer) -> DeviceRecord:
    """Device routes: a valid ``Authorization: Bearer <device token>``.

    A device in the device cache is answered at once, without a thread hop.
    """
    device = await _device_for(request, _device_credentials(api_key, bearer).credentials)
    if device is None:
        raise _unknown_token()
    return device


async def require_admin_or_device(request: Request, api_key: ApiKey, bearer: Bearer) -> Caller:
    """Routes open to the operator and to devices (each then limited to its own records)."""
    if api_key is not None:
        _check_admin_key(request, api_key)
        return Caller(device=None)
    if bearer is not None:
        device = await _device_for(request, bearer.credentials)
        if device is None:
            raise _unknown_token()
        return Caller(device=device)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing credentials: send X-API-Key (operator) or 'Authorization: Bearer <device token>'",
        headers=_BEARER_CHALLENGE,
    )


@dataclass(frozen=True)
class Registrar:
    """Who registers a device: the operator (``enrollment_token`` None) or an enrollment token.

    The enrollment token is checked, and one use counted, when the device is
    stored (:meth:`UpdateService.register_device`), atomically.
    """

    enrollment_token: str | None


async def require_admin_or_enrollment(
    request: Request, api_key: ApiKey, bearer: Bearer
) -> Registrar:
    """Registration: ``X-API-Key`` (operator) or ``Authorization: Bearer <enrollment token>``.

    A device token is refused with 403 (a device cannot register devices);
    an unknown bearer with 401.
    """
    if api_key is not None:
        _check_admin_key(request, api_key)
        return Registrar(enrollment_token=None)
    if bearer is not None:
        token = bearer.credentials
        if is_enrollment_token(token):
            if len(token) > 512:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "unknown enrollment token",
                    headers=_BEARER_CHALLENGE,
                )
            return Registrar(enrollment_token=token)
        if await _device_for(request, token) is not None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "a device token cannot register devices: use the admin key or an enrollment token",
            )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid token: expected 'Authorization: Bearer <enrollment token>' or X-API-Key",
            headers=_BEARER_CHALLENGE,
        )
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing credentials: send X-API-Key (operator) or "
        "'Authorization: Bearer <enrollment token>'",
        headers=_BEARER_CHALLENGE,
    )


def ensure_same_device(device: DeviceRecord, device_uuid: uuid.UUID) -> None:
    """Refuse (403) a device acting on another device's records."""
    if device.device_uuid != device_uuid:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device may only access its own records")
