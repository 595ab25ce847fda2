"""Dashboard sessions: the admin key exchanged for a signed, expiring cookie (docs/dashboard.md).

Stateless, so every server process (and replica sharing the data directory)
accepts a session another one issued: a session is
``v1.<expires>.<nonce>.<mac>`` where ``expires`` is a Unix time in seconds
(UTC), ``nonce`` 16 random bytes and ``mac`` the HMAC-SHA256 of
``v1.<expires>.<nonce>`` under the signing key, all base64url without padding.

The signing key is HMAC-SHA256(server secret, admin key): the server secret
(32 random bytes, :func:`load_or_create_secret`) lives in the data directory,
so a stolen cookie gives nothing to guess the admin key offline with, and
changing the admin key ends every session at once.

The CSRF token of a session is HMAC-SHA256(signing key, ``csrf.<nonce>``):
the page reads it from ``/dashboard/api/session`` and sends it in
``X-CSRF-Token`` with every state-changing request. Pure apart from
:func:`load_or_create_secret` (disk): instants are passed in.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "SECRET_FILE_NAME",
    "SESSION_SECONDS",
    "Session",
    "SessionSigner",
    "load_or_create_secret",
]

#: The server secret's file in the data directory (hex, mode 0600).
SECRET_FILE_NAME = "dashboard-session.key"
#: How long a session lasts after login, in seconds (8 hours: one working day).
SESSION_SECONDS = 8 * 3600
_SECRET_BYTES = 32
_NONCE_BYTES = 16
_VERSION = "v1"
#: A cookie longer than this is refused before any parsing.
_MAX_COOKIE_CHARACTERS = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_or_create_secret(data_dir: Path) -> bytes:
    """The server secret in ``data_dir/dashboard-session.key``, created once if missing.

    Created with mode 0600 under a temporary name and hard-linked into place,
    so concurrent server processes starting together agree on one secret (the
    first link wins; the others read it).

    Raises:
        OSError: the directory cannot be written or the file read.
        ValueError: the file exists but does not hold 64 hex digits.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE_NAME
    if not path.exists():
        temporary = data_dir / f".{SECRET_FILE_NAME}.{secrets.token_hex(8)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(_SECRET_BYTES) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its secret
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    text = path.read_text(encoding="ascii").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(
            f"{path} does not hold a hex secret: delete it to make a new one"
        ) from None
    if len(secret) != _SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes, expected {_SECRET_BYTES}: delete it")
    return secret


@dataclass(frozen=True)
class Session:
    """A valid session: when it ends (aware UTC) and its nonce (base64url)."""

    expires_at: datetime
    nonce: str


class SessionSigner:
    """Issues and checks session cookies and their CSRF tokens (see the module docstring).

    Args:
        secret: the server secret (:func:`load_or_create_secret`).
        api_key: the admin key; part of the signing key.
        lifetime_seconds: how long a session lasts.
    """

    def __init__(
        self, secret: bytes, api_key: str, *, lifetime_seconds: int = SESSION_SECONDS
    ) -> None:
        self._key = hmac.new(secret, api_key.encode("utf-8"), hashlib.sha256).digest()
        self.lifetime_seconds = lifetime_seconds

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode("ascii"), hashlib.sha256).digest())

    def issue(self, *, now: datetime) -> tuple[str, Session]:
        """A new session starting at ``now``: (cookie value, session)."""
        expires = int(now.timestamp()) + self.lifetime_seconds
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        body = f"{_VERSION}.{expires}.{nonce}"
        return f"{body}.{self._mac(body)}", Session(datetime.fromtimestamp(expires, UTC), nonce)

    def verify(self, cookie: str | None, *, now: datetime) -> Session | None:
        """The session ``cookie`` holds, or None if it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > _MAX_COOKIE_CHARACTERS or not cookie.isascii():
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body), parts[3]):
            return None
        expires = int(parts[1])
        if expires <= now.timestamp():
            return None
        return Session(datetime.fromtimestamp(expires, UTC), parts[2])

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of ``session`` (the same for the whole session)."""
        return self._mac(f"csrf.{session.nonce}")

    def csrf_matches(self, session: Session, presented: str | None) -> bool:
        """Whether ``presented`` is the CSRF token of ``session`` (constant time)."""
        if not presented or not presented.isascii():
            return False
        return hmac.compare_digest(self.csrf_token(session), presented)
