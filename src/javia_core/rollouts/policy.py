"""A rollout's policy as the operator chose it at publish, and its parsers (docs/rollouts.md).

``--phases 1,10,50,100``, ``--phase-soak 30m``, ``--halt-failure-rate 10``,
``--halt-min-devices 5``, ``--phase-approval``, ``--require-approval`` and the
server's ``JAVIA_APPROVAL_REQUIRED`` become a :class:`RolloutPolicy`; anything
out of range is one :class:`RolloutError` line. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from javia_core.errors import JaviaError
from javia_core.models import UpdateType

__all__ = [
    "DEFAULT_HALT_FAILURE_RATE",
    "DEFAULT_HALT_MIN_DEVICES",
    "DEFAULT_PHASES",
    "DEFAULT_PHASE_SOAK_SECONDS",
    "MAX_HALT_MIN_DEVICES",
    "MAX_PHASE_SOAK_SECONDS",
    "RolloutError",
    "RolloutPolicy",
    "RolloutStateError",
    "check_aware",
    "check_halt_failure_rate",
    "check_halt_min_devices",
    "check_phase_soak",
    "check_phases",
    "format_duration",
    "parse_approval_required",
    "parse_duration",
    "parse_halt_failure_rate",
    "parse_halt_min_devices",
    "parse_phase_soak",
    "parse_phases",
]

#: One phase of 100 %: every targeted device at once.
DEFAULT_PHASES: tuple[int, ...] = (100,)
#: How long a phase must stay healthy before the next opens, and how long a
#: completed device is watched for regressions, in seconds (1 h).
DEFAULT_PHASE_SOAK_SECONDS = 3600
#: The longest soak accepted, in seconds (30 days).
MAX_PHASE_SOAK_SECONDS = 30 * 86400
#: Halt when at least this percentage of finished devices failed.
DEFAULT_HALT_FAILURE_RATE = 10.0
#: ... once at least this many devices have finished.
DEFAULT_HALT_MIN_DEVICES = 5
#: The highest halt minimum accepted. A minimum above the fleet's size means the
#: rollout can never halt, so nothing is lost by refusing it; a million is far
#: above any fleet one server serves and fits the 32-bit integer column that
#: stores it on PostgreSQL and SQLite alike (a 23-digit number overflowed SQLite).
MAX_HALT_MIN_DEVICES = 1_000_000


class RolloutError(JaviaError, ValueError):
    """A rollout setting is invalid: phases, soak, halt rate or minimum (docs/rollouts.md).

    The message is one line naming the expected form, for the CLI's red line
    and the API's 4xx; nothing has been changed when it is raised.
    """


class RolloutStateError(RolloutError):
    """An operator move the rollout's state does not allow (pausing a completed rollout)."""


# --------------------------------------------------------------------------- parsing

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_DURATION_UNITS = (86400, 3600, 60, 1)


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``30m``, ``2h``, ``1d`` or ``1h30m``.

    Units are ``d``, ``h``, ``m``, ``s``, largest first, each at most once; ``0``
    alone means no time. A bare number other than 0 is refused: ``30`` could
    mean seconds or minutes.

    Args:
        text: the duration as the operator typed it (surrounding spaces ignored).

    Returns:
        The duration in whole seconds, >= 0.

    Raises:
        RolloutError: the text is not such a duration.
    """
    cleaned = text.strip().lower()
    if cleaned == "0":
        return 0
    match = _DURATION.fullmatch(cleaned)
    if not cleaned or match is None:
        raise RolloutError(
            f"invalid duration {text!r}: expected a number with a unit, e.g. 90s, 30m, 2h, 1d "
            "or 1h30m"
        )
    return sum(int(v) * unit for v, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if v)


def format_duration(seconds: int) -> str:
    """``seconds`` as :func:`parse_duration` reads it: ``1h``, ``30m``, ``1h30m``, ``0``.

    Args:
        seconds: whole seconds, >= 0.

    Raises:
        ValueError: ``seconds`` is negative.
    """
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds}")
    if seconds == 0:
        return "0"
    parts = []
    for unit, name in zip(_DURATION_UNITS, "dhms", strict=True):
        count, seconds = divmod(seconds, unit)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts)


def parse_phases(text: str) -> tuple[int, ...]:
    """The cumulative phase percentages in ``1,10,50,100``, validated.

    Args:
        text: comma-separated whole percentages (spaces around them ignored).

    Returns:
        The percentages as a tuple, e.g. ``(1, 10, 50, 100)``.

    Raises:
        RolloutError: a part is not a whole number, or the list breaks a rule of
            :class:`RolloutPolicy` (the message says which).
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise RolloutError(f"no phases given: {_PHASES_FORM}")
    for part in parts:
        if not part.isascii() or not part.isdigit():
            raise RolloutError(f"invalid phase {part!r} in {text!r}: {_PHASES_FORM}")
    return check_phases(tuple(int(part) for part in parts))


_PHASES_FORM = "expected increasing whole percentages from 1 to 100 ending at 100, e.g. 1,10,50,100"


def _shown(text: str) -> str:
    """``text`` quoted for a one-line message, cut to 24 characters."""
    return repr(text if len(text) <= 24 else text[:21] + "...")


def parse_phase_soak(text: str, *, bare_seconds: bool = False) -> int:
    """The soak in ``--phase-soak 2h`` (or the form's ``phase_soak_seconds``), checked.

    Args:
        text: a duration (:func:`parse_duration`).
        bare_seconds: a bare whole number is seconds (the API's field); the
            CLI refuses one (``30`` could mean minutes).

    Returns:
        Seconds, 0 to :data:`MAX_PHASE_SOAK_SECONDS`.

    Raises:
        RolloutError: not a duration, or longer than 30 days (the message
            echoes ``text``, not the seconds).
    """
    cleaned = text.strip()
    if bare_seconds and cleaned.isascii() and cleaned.isdigit():
        seconds = int(cleaned)
    else:
        seconds = parse_duration(text)
    return check_phase_soak(seconds, shown=_shown(cleaned))


def parse_halt_failure_rate(text: str) -> float:
    """The percentage in ``--halt-failure-rate 10``, checked (:func:`check_halt_failure_rate`).

    Raises:
        RolloutError: not a number, or not above 0 and at most 100.
    """
    try:
        rate = float(text.strip())
    except ValueError:
        raise RolloutError(f"{_shown(text)} is not a percentage: {_RATE_FORM}") from None
    return check_halt_failure_rate(rate, shown=_shown(text.strip()))


def parse_halt_min_devices(text: str) -> int:
    """The device count in ``--halt-min-devices 5``, checked (:func:`check_halt_min_devices`).

    Raises:
        RolloutError: not a whole number, or outside 1 to :data:`MAX_HALT_MIN_DEVICES`.
    """
    cleaned = text.strip()
    if not cleaned.isascii() or not cleaned.isdigit():
        raise RolloutError(f"{_shown(text)} is not a whole number of devices: {_MIN_DEVICES_FORM}")
    return check_halt_min_devices(int(cleaned), shown=_shown(cleaned))


_RATE_FORM = "expected a percentage above 0 and at most 100, e.g. 10"
_MIN_DEVICES_FORM = f"expected a whole number from 1 to {MAX_HALT_MIN_DEVICES}, e.g. 5"


def check_phase_soak(seconds: int, *, shown: str | None = None) -> int:
    """Return ``seconds`` if it is a soak from 0 to 30 days, else raise RolloutError.

    ``shown``: the value as the operator typed it (``'99d'``), for the message.
    """
    valid_type = isinstance(seconds, int) and not isinstance(seconds, bool)
    if valid_type and 0 <= seconds <= MAX_PHASE_SOAK_SECONDS:
        return seconds
    shown = shown or repr(seconds)
    if valid_type and seconds > MAX_PHASE_SOAK_SECONDS:
        raise RolloutError(
            f"phase soak {shown} is too long: at most 30d ({MAX_PHASE_SOAK_SECONDS} seconds)"
        )
    raise RolloutError(
        f"phase soak must be 0 to {MAX_PHASE_SOAK_SECONDS} seconds (30 days), e.g. 30m or 2h; "
        f"got {shown}"
    )


def check_halt_failure_rate(rate: float, *, shown: str | None = None) -> float:
    """Return ``rate`` if it is a percentage above 0 and at most 100, else raise RolloutError."""
    if not isinstance(rate, bool) and isinstance(rate, int | float) and 0 < rate <= 100:
        return rate
    raise RolloutError(
        f"halt failure rate must be a percentage above 0 and at most 100, e.g. 10; got {shown or repr(rate)}"
    )


def check_halt_min_devices(count: int, *, shown: str | None = None) -> int:
    """Return ``count`` if it is 1 to :data:`MAX_HALT_MIN_DEVICES` devices, else raise RolloutError."""
    if (
        not isinstance(count, bool)
        and isinstance(count, int)
        and 1 <= count <= MAX_HALT_MIN_DEVICES
    ):
        return count
    raise RolloutError(
        f"halt minimum must be a whole number of devices from 1 to {MAX_HALT_MIN_DEVICES}, "
        f"e.g. 5; got {shown or _shown(repr(count))}"
    )


def check_phases(phases: tuple[int, ...]) -> tuple[int, ...]:
    """Return ``phases`` if they are valid cumulative percentages, else raise RolloutError.

    Valid: not empty, whole numbers from 1 to 100, strictly increasing, ending
    at 100 (docs/rollouts.md, phases).
    """
    shown = ",".join(str(p) for p in phases)
    if not phases:
        raise RolloutError(f"no phases given: {_PHASES_FORM}")
    for percent in phases:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
            raise RolloutError(f"phase {percent!r} is outside 1-100 in {shown}: {_PHASES_FORM}")
    for before, after in zip(phases, phases[1:], strict=False):
        if after <= before:
            raise RolloutError(
                f"phases must increase: {after} follows {before} in {shown}: {_PHASES_FORM}"
            )
    if phases[-1] != 100:
        raise RolloutError(
            f"the last phase must be 100 (cumulative percentages such as 1,10,50,100), "
            f"got {phases[-1]}"
        )
    return phases


def parse_approval_required(text: str) -> frozenset[UpdateType]:
    """The update types whose rollouts wait for approval, from ``JAVIA_APPROVAL_REQUIRED``.

    Args:
        text: comma-separated update types, e.g. ``instant`` or ``instant,urgent``;
            empty for none.

    Returns:
        The set of types.

    Raises:
        RolloutError: an unknown update type.
    """
    types: set[UpdateType] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            types.add(UpdateType(part))
        except ValueError:
            valid = ", ".join(t.value for t in UpdateType)
            raise RolloutError(
                f"unknown update type {part!r} in approval setting {text!r}: expected a "
                f"comma-separated list of {valid}"
            ) from None
    return frozenset(types)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How one update rolls out, as the operator chose at publish (docs/rollouts.md).

    Constructing one validates it, so a policy that exists is a valid one.

    Attributes:
        phases: cumulative percentages of the targeted devices, strictly
            increasing whole numbers from 1 to 100 ending at 100.
        phase_soak_seconds: how long a phase must stay healthy before the next
            opens, and how long a completed device is watched for regressions;
            0 to 30 days, in seconds.
        halt_failure_rate: halt at this failure percentage or more, above 0 and
            at most 100.
        halt_min_devices: ... once at least this many devices finished, 1 to
            :data:`MAX_HALT_MIN_DEVICES`.
        phase_approval: each next phase waits for the operator's approval
            instead of the soak.
        require_approval: the rollout offers nothing until the operator approves it.

    Raises:
        RolloutError: a field out of range; the message names it and the form.
    """

    phases: tuple[int, ...] = DEFAULT_PHASES
    phase_soak_seconds: int = DEFAULT_PHASE_SOAK_SECONDS
    halt_failure_rate: float = DEFAULT_HALT_FAILURE_RATE
    halt_min_devices: int = DEFAULT_HALT_MIN_DEVICES
    phase_approval: bool = False
    require_approval: bool = False

    def __post_init__(self) -> None:
        check_phases(tuple(self.phases))
        check_phase_soak(self.phase_soak_seconds)
        check_halt_failure_rate(self.halt_failure_rate)
        check_halt_min_devices(self.halt_min_devices)


def check_aware(name: str, value: datetime | None) -> None:
    """Raise RolloutError unless ``value`` is None or a timezone-aware datetime."""
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise RolloutError(f"{name} must be timezone-aware, got {value.isoformat()}")
