"""What every use case of the server shares: limits, errors and small input checks.

No I/O here. The use-case modules of :mod:`javia_updates.service` import
these; :mod:`javia_updates.service` re-exports the public ones.
"""

from __future__ import annotations

from typing import Any

from javia_core import input_rules
from javia_core.errors import BackendError, JaviaError, VersionError
from javia_core.input_rules import check_json
from javia_core.versioning import EXPECTED_FORM, MAX_COMPONENT, Version

__all__ = [
    "API_PREFIX",
    "DOCUMENT_CACHE_SIZE",
    "MAX_DATABASE_INTEGER",
    "MAX_METADATA_BYTES",
    "OFFLINE_AFTER_INTERVALS",
    "DamagedPackageError",
    "InvalidRequestError",
    "WriteNeeded",
    "check_metadata",
    "check_version_range",
    "version_or_none",
]

API_PREFIX = "/api/v1"
#: A device silent for more than this many heartbeat intervals is shown offline.
OFFLINE_AFTER_INTERVALS = 3
#: Largest ``metadata`` object a device or operator may store, as JSON bytes.
MAX_METADATA_BYTES = input_rules.MAX_METADATA_BYTES
#: Row ids and version numbers must fit a signed 64-bit integer column.
MAX_DATABASE_INTEGER = 2**63 - 1
#: Updates whose manifest and signature bytes are kept in memory (a few KiB each).
DOCUMENT_CACHE_SIZE = 64


class WriteNeeded(Exception):
    """A row write was attempted inside :meth:`FleetRecords.without_writes`.

    Raised before anything is written or queued (a reconciled, superseded or
    re-planned row); :meth:`UpdateService.heartbeat_without_writes` turns it
    into None and the caller answers again off the event loop."""


class DamagedPackageError(BackendError):
    """A stored payload archive's size differs from the size recorded at publish.

    A server-side fault (the object was truncated or damaged on disk or in
    the bucket): the download is refused before the first byte rather than
    declaring the recorded ``Content-Length`` and then sending too little.
    Maps to HTTP 503 (a :class:`~javia_core.errors.BackendError`).
    """


class InvalidRequestError(JaviaError, ValueError):
    """A request's input is invalid in a way no narrower error names.

    For example an empty target list, oversized metadata, or an update
    reference that is neither an id nor a version. Maps to HTTP 422.
    """


def version_or_none(text: str | None) -> Version | None:
    """``text`` parsed, or None if it is None or not ``vX.Y.Z``."""
    if text is None or not Version.is_valid(text):
        return None
    return Version.parse(text)


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` if it is device JSON within bounds (:func:`javia_core.input_rules.check_json`).

    The request models check each request's metadata; this checks what is
    stored: a heartbeat's metadata merged into the device's.

    Raises:
        InvalidRequestError: naming the place in ``metadata`` and the rule (API 422).
    """
    try:
        return check_json(metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None


def check_version_range(version: Version) -> None:
    """Refuse a version with a number above :data:`~javia_core.versioning.MAX_COMPONENT`.

    Raises:
        VersionError: a number does not fit the database.
    """
    # Version.parse already refuses numbers above MAX_COMPONENT (the one bound);
    # this guards a Version built directly from integers.
    if max(version.major, version.minor, version.patch) > MAX_COMPONENT:
        raise VersionError(
            f"version {str(version)[:60]} has a number above {MAX_COMPONENT}: expected {EXPECTED_FORM}"
        )
