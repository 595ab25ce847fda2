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


class NotFoundError(BackendError):
    """A device, update or package object does not exist."""


class ConflictError(BackendError):
    """The write conflicts with what is stored (e.g. publishing an existing version)."""


class InvalidTransitionError(BackendError):
    """A status report would move a device update backwards (DESIGN.md section 5)."""
