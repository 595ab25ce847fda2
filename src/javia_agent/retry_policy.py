"""Transient or permanent: the one place that decides, and the backoff of a transient fault. Pure.

Only a verified package that fails its own checks or its health check marks a
version failed on a device (DESIGN.md section 10, issue 14). A package index
or apt mirror that is down, a network cut or a full disk is nobody's verdict
on the package: the agent reports ``retrying`` with the reason, keeps the
running release untouched, and tries again with exponential, jittered backoff
until a deadline; at the deadline the update ends ``failed`` with the last
reason (the version is not marked failed on the device).

- :func:`transient_reason` says whether an error is transient, and why.
- :func:`failure_class_of` names the :class:`~javia_core.failures.FailureClass`
  of an error raised before the switch.
- :class:`RetrySchedule` holds the numbers; :meth:`RetrySchedule.delay_seconds`
  and :meth:`RetrySchedule.deadline` are the rules (time is passed in).

The deadline (docs/agent.md, "Transient failures"): for a scheduled update
whose offer carries a maintenance window, the end of that window; otherwise
``retry_deadline_seconds`` (default 6 h) after the first transient failure.
"""

from __future__ import annotations

import errno
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from javia_agent.errors import (
    CommandFailedError,
    ConfigError,
    DiskSpaceError,
    DownloadError,
    NetworkError,
    PackageManagerLockError,
)
from javia_core.errors import ManifestError, PackageError, SignatureError
from javia_core.failures import FailureClass
from javia_core.models import UpdateType

__all__ = ["RetrySchedule", "failure_class_of", "transient_reason"]

# What pip prints when it could not reach an index (urllib3/requests wording,
# pip's own "Could not fetch URL", DNS and routing errors, 5xx answers).
_PIP_NETWORK = re.compile(
    r"Connection refused|Could not fetch URL|Max retries exceeded|NewConnectionError"
    r"|Temporary failure in name resolution|Name or service not known|Network is unreachable"
    r"|No route to host|Read timed out|ReadTimeoutError|ConnectTimeoutError|ProxyError"
    r"|Connection reset by peer|RemoteDisconnected|ProtocolError|Retrying \(Retry\("
    r"|HTTP error 5\d\d|5\d\d Server Error|Service Unavailable|Bad Gateway",
    re.IGNORECASE,
)
# What apt prints when a mirror is unreachable or mid-sync.
_APT_NETWORK = re.compile(
    r"Temporary failure resolving|Could not resolve|Could not connect to|Failed to fetch"
    r"|Unable to fetch some archives|Connection failed|Connection timed out|Connection refused"
    r"|Network is unreachable|No route to host|Hash Sum mismatch|50[234]\s+\w"
)
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|\[Errno 28\]")
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def transient_reason(error: BaseException) -> tuple[FailureClass, str] | None:
    """Whether ``error`` is transient: its class and a one-line why, else None.

    Transient: a full disk (``DiskSpaceError``, ``ENOSPC``/``EDQUOT``, or a
    command saying so), pip unable to reach its index (connection refused,
    DNS, timeouts, 5xx), apt unable to reach a mirror (or a mirror mid-sync:
    hash sum mismatch), the network (``NetworkError``). Permanent: everything
    else, notably pip finding no such distribution on an index it reached,
    apt's "Unable to locate package", a setup command failing, a payload
    that does not match its signed manifest.
    """
    if isinstance(error, DiskSpaceError):
        return FailureClass.DISK_SPACE, str(error)
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        where = f": {error.filename}" if error.filename else ""
        return FailureClass.DISK_SPACE, f"the disk is full ({error.strerror}{where})"
    if isinstance(error, NetworkError):
        return FailureClass.NETWORK, str(error)
    if isinstance(error, CommandFailedError):
        output = error.output or ""
        if _NO_SPACE.search(output):
            return FailureClass.DISK_SPACE, f"{error} (the disk is full)"
        if error.kind == "pip" and _PIP_NETWORK.search(output):
            return FailureClass.DEPENDENCIES, f"{error} (the package index is unreachable)"
        if error.kind == "apt" and _APT_NETWORK.search(output):
            return FailureClass.APT, f"{error} (the apt mirror is unreachable)"
    return None


_COMMAND_CLASSES = {
    "pip": FailureClass.DEPENDENCIES,
    "venv": FailureClass.DEPENDENCIES,
    "apt": FailureClass.APT,
    "setup": FailureClass.SETUP,
    "health": FailureClass.HEALTH_CHECK,
}


def failure_class_of(error: BaseException | None, state: str) -> FailureClass:
    """The class of an error raised before the switch in agent ``state`` (``downloading``…)."""
    transient = None if error is None else transient_reason(error)
    if transient is not None:
        return transient[0]
    if isinstance(error, CommandFailedError):
        return _COMMAND_CLASSES.get(error.kind, FailureClass.OTHER)
    if isinstance(error, SignatureError):
        return FailureClass.SIGNATURE
    if isinstance(error, ConfigError):
        return FailureClass.CONFIGURATION
    if isinstance(error, PackageManagerLockError):
        return FailureClass.APT
    if isinstance(error, DownloadError):
        return FailureClass.DOWNLOAD
    if isinstance(error, (ManifestError, PackageError)):
        return FailureClass.PACKAGE if state == "staging" else FailureClass.SIGNATURE
    if state in ("downloading", "verifying"):
        return FailureClass.DOWNLOAD
    return FailureClass.PACKAGE if state == "staging" else FailureClass.OTHER


@dataclass(frozen=True)
class RetrySchedule:
    """How a transient fault is retried.

    Attributes:
        deadline_seconds: how long after the first transient failure the agent
            keeps trying an update that is not bound to a maintenance window.
        base_seconds: the first delay; each next one doubles (jittered).
        max_seconds: the longest delay between two tries.
        rng: the jitter's source (injectable: tests pass a seeded one).
    """

    deadline_seconds: float = 6 * 3600.0
    base_seconds: float = 30.0
    max_seconds: float = 1800.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_seconds(self, tries: int) -> float:
        """Seconds to wait after the ``tries``-th transient failure (1, 2, ...).

        ``base * 2**(tries-1)`` capped at ``max_seconds``, then "equal
        jitter": a uniform draw from the upper half, so a fleet that lost one
        mirror at once does not come back at one second.
        """
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** min(max(0, tries - 1), 40))
        return self.rng.uniform(ceiling / 2, ceiling)

    def deadline(
        self,
        first_failure: datetime,
        *,
        update_type: UpdateType | None,
        window_end: datetime | None,
    ) -> datetime:
        """When the agent stops retrying (aware UTC).

        A scheduled update with a window (``window_end``, from the offer):
        the end of that window, at the earliest ``first_failure`` (so one try
        is never refused outright). Otherwise ``first_failure`` +
        :attr:`deadline_seconds`.
        """
        if update_type is UpdateType.SCHEDULED and window_end is not None:
            return max(window_end, first_failure)
        return first_failure + timedelta(seconds=self.deadline_seconds)
