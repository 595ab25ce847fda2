"""The error hierarchy of javia (DESIGN.md section 1).

Every error javia raises on purpose derives from :class:`JaviaError`, so the
CLI can turn it into one red line and a non-zero exit, and the server into a
4xx with the message. A message says what was wrong and, where there is one,
the expected form.
"""

from __future__ import annotations


class JaviaError(Exception):
    """Root of every deliberate javia error."""


class VersionError(JaviaError, ValueError):
    """A version string is not of the form ``vX.Y.Z`` (DESIGN.md section 2)."""


class ManifestError(JaviaError, ValueError):
    """A manifest is malformed: bad JSON, missing or ill-typed fields."""


class SignatureError(JaviaError):
    """A signature is missing, malformed, by an untrusted key, or does not verify."""


class SigningKeyError(JaviaError):
    """A key file cannot be read, has the wrong type, or its passphrase is wrong."""


class PackageError(JaviaError):
    """A package (manifest + signature + payload) is invalid or unsafe to install."""


class ScheduleError(JaviaError, ValueError):
    """A scheduling input is invalid: unknown timezone, unknown update type."""


class BackendError(JaviaError):
    """The storage backend failed (database or blob store)."""


class StorageRefusedError(BackendError):
    """The blob store answered but refused the request (its 4xx), or answered nonsense.

    Retrying the same request will not help: the server's Storage settings
    (key, bucket) or the request must change. The API answers 502 with the
    blob store's message. A plain :class:`BackendError` (the blob store is
    unreachable, timed out, or failed with a 5xx) stays a 503: try again later.
    """


class StorageTooLargeError(StorageRefusedError):
    """An object is larger than the blob store accepts (Storage's 413 ``EntityTooLarge``).

    The API answers 413; the message names the limit when it is known.

    Attributes:
        limit_bytes: the limit in bytes, or None when the blob store did not say.
        size_bytes: the refused object's size in bytes, or None if unknown.
    """

    def __init__(
        self, message: str, *, limit_bytes: int | None = None, size_bytes: int | None = None
    ) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes
        self.size_bytes = size_bytes


class NotFoundError(BackendError):
    """A device, update or package object does not exist."""


class ConflictError(BackendError):
    """The write conflicts with what is stored (e.g. publishing an existing version)."""


class InvalidTransitionError(BackendError):
    """A status report would move a device update backwards (DESIGN.md section 5)."""
