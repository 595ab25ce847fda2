"""How a device's progress on an update may move (DESIGN.md section 5). Pure.

The rules every store applies, whatever its storage: a ``device_updates``
row moves only forward (:data:`ALLOWED_PREVIOUS`, the one table of legal
transitions), and a completed update raises the device's version only
upwards (:func:`raises_version`). Stores apply a transition as one
conditional write (``UPDATE ... WHERE status IN (allowed previous)``), so
concurrent server replicas can never move a row backwards.
"""

from __future__ import annotations

from collections.abc import Mapping

from javia_core.models import UpdateStatus
from javia_core.versioning import Version

__all__ = [
    "ALLOWED_PREVIOUS",
    "IN_FLIGHT_STATUSES",
    "REASON_REFRESHING",
    "WAITING_STATUSES",
    "raises_version",
]

_S = UpdateStatus
#: Legal transitions of a ``device_updates`` row: target status → statuses it
#: may come from (DESIGN.md section 5). Progress moves only forward; a step the
#: agent did not report (its ``downloading`` report was lost, say) may be
#: skipped. ``retrying`` is the one way back: a transient fault (revision
#: 0005) lets the device try again, downloading or installing anew; staged and
#: retrying rows were never installed, so they may still be superseded or
#: cancelled. Final statuses (completed, failed, rolled_back, superseded,
#: cancelled) have no way out, so a failed version is never offered again.
ALLOWED_PREVIOUS: Mapping[UpdateStatus, frozenset[UpdateStatus]] = {
    _S.PENDING: frozenset(),
    _S.DOWNLOADING: frozenset({_S.PENDING, _S.RETRYING}),
    _S.STAGED: frozenset({_S.PENDING, _S.DOWNLOADING, _S.RETRYING}),
    _S.RETRYING: frozenset({_S.PENDING, _S.DOWNLOADING, _S.STAGED, _S.INSTALLING}),
    _S.INSTALLING: frozenset({_S.PENDING, _S.DOWNLOADING, _S.STAGED, _S.RETRYING}),
    _S.COMPLETED: frozenset({_S.PENDING, _S.DOWNLOADING, _S.STAGED, _S.RETRYING, _S.INSTALLING}),
    _S.FAILED: frozenset({_S.PENDING, _S.DOWNLOADING, _S.STAGED, _S.RETRYING, _S.INSTALLING}),
    _S.ROLLED_BACK: frozenset({_S.DOWNLOADING, _S.STAGED, _S.RETRYING, _S.INSTALLING}),
    _S.SUPERSEDED: frozenset({_S.PENDING, _S.STAGED, _S.RETRYING}),
    _S.CANCELLED: frozenset({_S.PENDING, _S.STAGED, _S.RETRYING}),
}

#: Statuses whose repeated report with a new reason stores that reason (the
#: status stays): a device retrying a transient fault says what it waits for
#: now (the mirror came back, the disk is full instead), docs/agent.md.
REASON_REFRESHING = frozenset({UpdateStatus.RETRYING})

#: Statuses of a row the device is working on right now.
IN_FLIGHT_STATUSES = frozenset({UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING})

#: Statuses of a row waiting for its install time: offered while its rollout lets it
#: start, superseded by a higher version, re-planned when its window passed. A
#: ``staged`` row (prepared ahead of its window) waits like a ``pending`` one.
WAITING_STATUSES = frozenset({UpdateStatus.PENDING, UpdateStatus.STAGED})


def raises_version(running: str | None, installed: str) -> bool:
    """Whether completing ``installed`` raises a device that reports ``running``.

    The rule of :meth:`Store.transition` on ``completed``: the device's
    ``current_version`` becomes the update's version unless it already runs
    that version or a higher one (an unparsable or missing version is raised).
    """
    if running is None or not Version.is_valid(running):
        return True
    return Version.parse(running) < Version.parse(installed)
