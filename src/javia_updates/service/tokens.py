"""Device and enrollment tokens: how they are made, recognised and stored (hashed).

Pure functions over :mod:`secrets` and :mod:`hashlib`; re-exported by
:mod:`javia_updates.service`.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = [
    "ENROLLMENT_TOKEN_PREFIX",
    "hash_token",
    "is_enrollment_token",
    "new_device_token",
    "new_enrollment_token",
]

#: Enrollment tokens start with this, so the server (and a secret scanner) can
#: tell them from device tokens at a glance.
ENROLLMENT_TOKEN_PREFIX = "javia_enroll_"


def new_device_token() -> str:
    """A fresh device token: 32 random bytes (256 bits), URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex of ``token``: what the database stores instead of the token.

    A plain (unsalted, fast) hash is enough: tokens are 256 random bits, so
    nobody can guess one from its hash, and lookups stay one indexed query.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_enrollment_token() -> str:
    """A fresh enrollment token: :data:`ENROLLMENT_TOKEN_PREFIX` and 256 random bits, URL-safe."""
    return ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_enrollment_token(token: str) -> bool:
    """Whether ``token`` has the form of an enrollment token (not whether it is valid)."""
    return token.startswith(ENROLLMENT_TOKEN_PREFIX)
