"""How a rollout reads each device-update status (docs/rollouts.md, "Device statuses"). Pure.

One row per :class:`~javia_core.models.UpdateStatus`, used by the server's
rollout counts, its offer gate under a pause and the revert:

* **took the offer** (:data:`TOOK_OFFER`): the device accepted the update
  (``downloading`` onwards, ``staged`` and ``retrying`` included). These are
  the exposed cohort of ``javia updates show``; ``pending`` devices are the
  cohort still on the previous version.
* **finished** (:data:`FINISHED`): a final outcome the phase gate and the
  halt rule count; every other targeted row keeps its phase open.
* **not targeted** (:data:`NOT_TARGETED`): superseded or cancelled; the phase
  gate does not wait for it.
* **held by a pause** (:data:`HELD_BY_PAUSE`): installed nothing yet but has
  work of its own on the device (a staged release, a download or a step it
  retries). A pause keeps that work and installs nothing of it; a resume
  goes on from it without downloading again.
* **stopped by cancel** (:data:`STOPPED_BY_CANCEL`): the rows a cancel (and
  so a revert), a halt or a newer release ends before anything is installed:
  :data:`~javia_core.status_rules.ALLOWED_PREVIOUS` of ``cancelled``.
* the rest of the rows not yet finished (``downloading``, ``installing``)
  finish and report whatever the rollout does (DESIGN.md section 9).
"""

from __future__ import annotations

from javia_core.models import UpdateStatus
from javia_core.status_rules import ALLOWED_PREVIOUS

__all__ = [
    "FINISHED",
    "HELD_BY_PAUSE",
    "NOT_TARGETED",
    "STOPPED_BY_CANCEL",
    "TOOK_OFFER",
    "markdown_table",
]

_S = UpdateStatus

#: Final outcomes the phase gate and the halt rule count.
FINISHED = frozenset({_S.COMPLETED, _S.FAILED, _S.ROLLED_BACK})
#: Rows that no longer target the device: the phase gate does not wait for them.
NOT_TARGETED = frozenset({_S.SUPERSEDED, _S.CANCELLED})
#: The device accepted the update: the exposed cohort.
TOOK_OFFER = frozenset({_S.DOWNLOADING, _S.STAGED, _S.RETRYING, _S.INSTALLING} | FINISHED)
#: Rows ended before anything is installed by a cancel, a revert, a halt or a newer release.
STOPPED_BY_CANCEL = ALLOWED_PREVIOUS[_S.CANCELLED]
#: Taken, nothing installed yet: a pause keeps the device's work and installs none of it.
HELD_BY_PAUSE = STOPPED_BY_CANCEL & TOOK_OFFER


#: The order of the documented table: the way a row moves.
_ORDER = (
    _S.PENDING,
    _S.DOWNLOADING,
    _S.STAGED,
    _S.RETRYING,
    _S.INSTALLING,
    _S.COMPLETED,
    _S.FAILED,
    _S.ROLLED_BACK,
    _S.SUPERSEDED,
    _S.CANCELLED,
)


#: What a pause, and what a cancel, halt or revert, does to a row's work (held rows aside).
_EFFECTS = {
    _S.PENDING: ("not offered", "never offered"),
    _S.DOWNLOADING: (
        "goes on: an instant update installs, another stays staged",
        "goes on: an instant update installs, another is deleted once staged",
    ),
    _S.INSTALLING: ("finishes and reports", "finishes and reports"),
}


def _effects(status: UpdateStatus) -> tuple[str, str]:
    if status in HELD_BY_PAUSE:
        return (
            "kept on the device (its staged release, its download), not installed; "
            "`resume` goes on from it",
            "deleted from the device, never installed",
        )
    return _EFFECTS.get(status, ("—", "—"))


def markdown_table() -> str:
    """The statuses as a Markdown table (docs/rollouts.md holds it verbatim).

    Columns: the status, whether its device is in the exposed cohort, what
    the phase gate counts it as, and what a pause and what a cancel, halt or
    revert does to the device's work on it.
    """
    lines = [
        "| status | exposed cohort | phase gate | on `pause` | on `cancel`, halt, `revert` |",
        "|---|---|---|---|---|",
    ]
    for status in _ORDER:
        if status in NOT_TARGETED:
            exposed, gate = "no", "not counted"
        else:
            exposed = "yes" if status in TOOK_OFFER else "no: still on the previous version"
            gate = "finished" if status in FINISHED else "not finished"
        on_pause, on_stop = _effects(status)
        lines.append(f"| `{status}` | {exposed} | {gate} | {on_pause} | {on_stop} |")
    return "\n".join(lines) + "\n"
