"""When a device may install an update (DESIGN.md section 4). Pure: no I/O.

Every function here takes ``now`` (an aware datetime) instead of reading a
clock, and returns aware UTC datetimes. Device-local time uses the device's
IANA timezone (``Europe/Berlin``), read from the ``tzdata``/system zone
database through :mod:`zoneinfo`.

The rules, in one place:

* A **maintenance window** starts at 02:00 device-local time and lasts
  ``window_seconds`` (default 3 h, measured in real elapsed seconds, so a
  window that spans a DST change is still 3 h long). A 02:00 that does not
  exist (spring-forward gap) means the first instant after the gap; a 02:00
  that occurs twice (fall-back) means the first occurrence only. Formally: the
  window of local date *d* starts at the earliest instant whose local wall
  clock reads *d* 02:00 or later (:func:`window_start_on`).
* Within a window each device starts at a stable **offset** derived from the
  SHA-256 of its uuid, spread uniformly over the first two thirds of the window
  so a device that starts at its offset still has a third of the window to
  finish (:func:`window_offset_seconds`).
* **scheduled**: install at the device's slot in the next window; a device that
  missed its window waits for the following one (:func:`current_install_plan`).
* **urgent**: install once the application has been idle for ``idle_seconds``
  (default 1 h) continuously; at the latest at the device's slot in the next
  window.
* **instant**: install at the next check; at publish only devices seen within
  the last 300 s (inclusive) get a row, the others get it at their next
  heartbeat (:func:`is_online`, :func:`plan_rollout`).
* **Supersession**: the highest pending version wins and installs with the
  most urgent timing among the rows it supersedes (:func:`most_urgent`).
* **Clock**: a Raspberry Pi has no real-time clock, so the agent calls
  :func:`decide_install` with the server's time from the heartbeat response
  plus the monotonic time elapsed since.

The window arithmetic (DST gaps and folds, offsets) is
:mod:`javia_core.maintenance_windows`, re-exported here. The rest stays in
this one module on purpose, though it is long: it is the single table of
update-type rules that the server's plan, the device's own decision and the
dry run all apply, so "when does an urgent update install?" is answered in
one place, checkable line by line against DESIGN.md section 4.

Example:
    >>> from datetime import datetime, timezone
    >>> after = datetime(2027, 3, 13, 20, 0, tzinfo=timezone.utc)
    >>> next_window_start(after, "Europe/Berlin").isoformat()
    '2027-03-14T01:00:00+00:00'
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

from javia_core.errors import ScheduleError, VersionError
from javia_core.maintenance_windows import (
    DEFAULT_WINDOW_SECONDS,
    DEFAULT_WINDOW_START,
    MAX_WINDOW_SECONDS,
    OFFSET_SPREAD_DENOMINATOR,
    OFFSET_SPREAD_NUMERATOR,
    check_aware,
    check_window_seconds,
    check_window_time,
    current_window,
    device_zone,
    latest_window_start,
    next_window_start,
    parse_device_uuid,
    window_offset_seconds,
    window_start_on,
)
from javia_core.models import InstallDirective, UpdateType, UrgencyEvidence
from javia_core.versioning import Version

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_WINDOW_SECONDS",
    "DEFAULT_WINDOW_START",
    "MAX_WINDOW_SECONDS",
    "OFFSET_SPREAD_DENOMINATOR",
    "OFFSET_SPREAD_NUMERATOR",
    "ONLINE_WITHIN_SECONDS",
    "DeviceFacts",
    "DevicePlan",
    "InstallDecision",
    "InstallPlan",
    "ScheduleError",
    "Supersession",
    "SupersessionCandidate",
    "current_install_plan",
    "current_window",
    "bound_by_signed_type",
    "check_offered_window",
    "check_urgency_evidence",
    "decide_install",
    "describe_duration",
    "install_times",
    "is_online",
    "most_urgent",
    "next_window_start",
    "plan_in_own_window",
    "plan_install",
    "plan_rollout",
    "supersede",
    "window_offset_seconds",
    "window_start_on",
]

DEFAULT_IDLE_SECONDS = 3600
ONLINE_WITHIN_SECONDS = 300

_URGENCY = {UpdateType.SCHEDULED: 0, UpdateType.URGENT: 1, UpdateType.INSTANT: 2}
_LOCAL_FORMAT = "%Y-%m-%d %H:%M %Z"


# --------------------------------------------------------------------------- checks


def _idle_required(idle_seconds: int) -> int:
    if isinstance(idle_seconds, bool) or not isinstance(idle_seconds, int) or idle_seconds < 0:
        raise ScheduleError(
            f"idle time must be a whole non-negative number of seconds, e.g. 3600; "
            f"got {idle_seconds!r}"
        )
    return idle_seconds


def _update_type(update_type: UpdateType | str) -> UpdateType:
    if isinstance(update_type, UpdateType):
        return update_type
    if isinstance(update_type, str):
        return UpdateType.parse(update_type)
    raise ScheduleError(
        f"unknown update type {update_type!r}: expected one of scheduled, urgent, instant"
    )


# --------------------------------------------------------------------------- small rules


def is_online(
    last_seen: datetime | None, now: datetime, within_seconds: int = ONLINE_WITHIN_SECONDS
) -> bool:
    """Whether ``last_seen`` is within ``within_seconds`` of ``now``, inclusive (DESIGN.md section 4).

    300 s ago counts as online, 301 s does not. A ``last_seen`` slightly in the
    future (server replicas whose clocks differ) counts as online.

    Args:
        last_seen: the device's last heartbeat as recorded by the server (aware),
            or None for a device never seen.
        now: an aware datetime.
        within_seconds: the online threshold in seconds (default 300).

    Returns:
        True when the device was seen within the threshold; False for None.

    Raises:
        ScheduleError: a naive ``now`` or ``last_seen``.
    """
    check_aware("now", now)
    if last_seen is None:
        return False
    check_aware("last_seen", last_seen)
    return now - last_seen <= timedelta(seconds=within_seconds)


def most_urgent(types: Iterable[UpdateType | str]) -> UpdateType:
    """The most urgent of ``types``: instant > urgent > scheduled (DESIGN.md section 4, supersession).

    The highest pending version installs with the most urgent timing among the
    rows it supersedes, since packages are cumulative.

    Args:
        types: update types (``UpdateType`` or their string values).

    Returns:
        The most urgent type.

    Raises:
        ScheduleError: (a ``ValueError``) when ``types`` is empty or holds an
            unknown type.
    """
    parsed = [_update_type(t) for t in types]
    if not parsed:
        raise ScheduleError("most_urgent needs at least one update type, got none")
    return max(parsed, key=_URGENCY.__getitem__)


class SupersessionCandidate(Protocol):
    """What :func:`supersede` reads of a pending row (a stored row, or one a plan imagines)."""

    @property
    def version(self) -> str:
        """The row's update version, ``vX.Y.Z``."""
        ...

    @property
    def install_type(self) -> UpdateType:
        """The row's timing: its update's type, or one inherited by an earlier supersession."""
        ...

    @property
    def scheduled_for(self) -> datetime:
        """When the row may install (aware UTC)."""
        ...

    @property
    def window_end(self) -> datetime | None:
        """The end of its maintenance window (aware UTC), None for instant."""
        ...


Row = TypeVar("Row", bound=SupersessionCandidate)


@dataclass(frozen=True, slots=True)
class Supersession(Generic[Row]):
    """The outcome of :func:`supersede` over one device's pending rows.

    Attributes:
        winner: the row the device installs: the highest version.
        timing: the update type it installs with: the most urgent among all rows.
        donor: the row whose stored timing ``winner`` takes: ``winner`` itself
            when its own type is the most urgent, else the earliest-scheduled
            row of type ``timing``.
        superseded: every other row, which becomes ``superseded``.
    """

    winner: Row
    timing: UpdateType
    donor: Row
    superseded: tuple[Row, ...]

    @property
    def inherited(self) -> bool:
        """Whether the winner installs with another row's (more urgent) timing."""
        return self.donor is not self.winner


def supersede(rows: Sequence[Row]) -> Supersession[Row]:
    """Which of one device's pending rows it installs, and with which timing (DESIGN.md section 4).

    "A device installs the highest pending version; older pending rows become
    superseded. The install timing is the most urgent type among the rows it
    supersedes (instant > urgent > scheduled), since packages are cumulative."
    The heartbeat applies this to a device's rows that may start; the plans
    (``javia updates plan``, ``javia publish --dry-run``) and the publish
    (which supersedes at once) apply the same function, so what a plan says
    is what the heartbeat does.

    Args:
        rows: the device's pending rows that may start (at least one; versions
            distinct, as one device has one row per update).

    Returns:
        The winner, its timing type, the row lending that timing, and the
        superseded rows (input order).

    Raises:
        ScheduleError: ``rows`` is empty; VersionError: a malformed version.
    """
    if not rows:
        raise ScheduleError("supersede needs at least one pending row, got none")
    winner = max(rows, key=lambda row: Version.parse(row.version))
    timing = most_urgent(row.install_type for row in rows)
    donor = winner
    if timing is not winner.install_type:
        donor = min(
            (row for row in rows if row.install_type is timing), key=lambda row: row.scheduled_for
        )
    return Supersession(winner, timing, donor, tuple(row for row in rows if row is not winner))


def describe_duration(seconds: float) -> str:
    """A short human duration: ``42 s``, ``5 min``, ``2 h 13 min``, ``3 d 4 h``.

    Args:
        seconds: a non-negative duration in seconds; fractions are rounded down.

    Returns:
        The two largest non-zero units (days, hours, minutes), or seconds below a
        minute.
    """
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{v} {unit}" for v, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if v]
    return " ".join(parts[:2])


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class InstallPlan:
    """When one device installs one update: UTC instants, seconds.

    Attributes:
        install_at: UTC instant from which the device may install (instant: now;
            scheduled: its slot in the window; urgent: the deadline slot).
        window_end: UTC end of the maintenance window (scheduled, urgent), None
            for instant.
        idle_seconds_required: urgent only: seconds of continuous application
            idle time after which the device may install before ``install_at``.
        reason: one line for operators, with the local time.
    """

    install_at: datetime
    window_end: datetime | None
    idle_seconds_required: int | None
    reason: str


def _local(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).strftime(_LOCAL_FORMAT)


def plan_install(
    update_type: UpdateType,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    idle_seconds: int = DEFAULT_IDLE_SECONDS,
) -> InstallPlan:
    """The plan for a device that gets (or re-checks) a row of ``update_type`` at ``now``.

    DESIGN.md section 4:

    * instant: ``install_at = now``; no window, no idle requirement.
    * scheduled: the device's slot = window start + :func:`window_offset_seconds`.
      If ``now`` lies inside a window whose slot for this device is still ahead
      (or exactly now), that window; otherwise the next window.
      ``window_end`` = window start + ``window_seconds``.
    * urgent: as scheduled (the slot is the deadline), plus
      ``idle_seconds_required = idle_seconds``.

    Args:
        update_type: the (most urgent, after supersession) update type.
        now: an aware datetime, the server's clock.
        timezone: IANA timezone of the device.
        device_uuid: the device's uuid (decides its offset in the window).
        window_start: local wall-clock start of windows, naive (default 02:00).
        window_seconds: window length in seconds (1 to 86400, default 3 h).
        idle_seconds: urgent: continuous idle time in seconds (default 1 h).

    Returns:
        The plan, instants in UTC.

    Raises:
        ScheduleError: naive ``now``, unknown timezone or update type, a bad uuid,
            window length or idle time.
    """
    kind = _update_type(update_type)
    check_aware("now", now)
    zone = device_zone(timezone)
    check_window_time(window_start)
    check_window_seconds(window_seconds)
    _idle_required(idle_seconds)
    offset = window_offset_seconds(device_uuid, window_seconds)
    now_utc = now.astimezone(UTC)
    if kind is UpdateType.INSTANT:
        return InstallPlan(now_utc, None, None, "instant: installs at its next check")

    length = timedelta(seconds=window_seconds)
    try:
        start = latest_window_start(now_utc, zone, window_start)
        if not _slot_ahead(now_utc, start, length, offset):
            start = next_window_start(now_utc, zone.key, window_start)
    except OverflowError:
        raise ScheduleError(f"{now.isoformat()} is out of range for scheduling") from None
    slot = start + timedelta(seconds=offset)
    return _window_plan(kind, start, start + length, slot, zone, idle_seconds)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _slot_ahead(now_utc: datetime, start: datetime, length: timedelta, offset: int) -> bool:
    """Whether the window that began at ``start`` is open and the device's slot is still ahead."""
    return now_utc < start + length and start + timedelta(seconds=offset) >= now_utc


def install_times(
    update_type: UpdateType,
    *,
    now: datetime,
    devices: Sequence[tuple[str, uuid.UUID | str]],
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> list[tuple[datetime, datetime | None]]:
    """``(install_at, window_end)`` of :func:`plan_install` for many devices at once.

    The same rules and instants as calling :func:`plan_install` for each
    device, without the operator-facing reason, and with each timezone's
    windows computed once: what a publish to 100,000 devices needs.

    Args:
        update_type: scheduled, urgent or instant.
        now: an aware datetime, the server's clock.
        devices: ``(timezone, device_uuid)`` per device.
        window_start: local wall-clock start of windows, naive (default 02:00).
        window_seconds: window length in seconds (1 to 86400, default 3 h).

    Returns:
        One ``(install_at, window_end)`` per device, in order, aware UTC;
        ``window_end`` is None for instant.

    Raises:
        ScheduleError: as :func:`plan_install`.
    """
    kind = _update_type(update_type)
    check_aware("now", now)
    check_window_time(window_start)
    check_window_seconds(window_seconds)
    now_utc = now.astimezone(UTC)
    if kind is UpdateType.INSTANT:
        return [(now_utc, None)] * len(devices)
    length = timedelta(seconds=window_seconds)
    spread = max(1, window_seconds * OFFSET_SPREAD_NUMERATOR // OFFSET_SPREAD_DENOMINATOR)
    windows: dict[str, tuple[datetime, datetime]] = {}
    times: list[tuple[datetime, datetime | None]] = []
    for timezone, device_uuid in devices:
        pair = windows.get(timezone)
        if pair is None:
            zone = device_zone(timezone)
            try:
                pair = (
                    latest_window_start(now_utc, zone, window_start),
                    next_window_start(now_utc, zone.key, window_start),
                )
            except OverflowError:
                raise ScheduleError(f"{now.isoformat()} is out of range for scheduling") from None
            windows[timezone] = pair
        # window_offset_seconds, without parsing uuids already in canonical form.
        if type(device_uuid) is str and _CANONICAL_UUID.fullmatch(device_uuid):
            text = device_uuid
        else:
            text = str(parse_device_uuid(device_uuid))
        offset = int.from_bytes(hashlib.sha256(text.encode("ascii")).digest(), "big") % spread
        start = pair[0] if _slot_ahead(now_utc, pair[0], length, offset) else pair[1]
        times.append((start + timedelta(seconds=offset), start + length))
    return times


def _window_plan(
    kind: UpdateType,
    start: datetime,
    end: datetime,
    slot: datetime,
    zone: ZoneInfo,
    idle_seconds: int,
) -> InstallPlan:
    """A scheduled or urgent plan with its operator-facing reason (local times)."""
    if kind is UpdateType.URGENT:
        reason = f"urgent: after {describe_duration(idle_seconds)} idle, at the latest {_local(slot, zone)}"
        return InstallPlan(slot, end, idle_seconds, reason)
    start_local, end_local = start.astimezone(zone), end.astimezone(zone)
    if start_local.tzname() == end_local.tzname():
        hours = f"{start_local:%H:%M}–{end_local:%H:%M}"
    else:  # clocks change inside the window: say so, or 02:00–04:00 looks like 2 h
        hours = f"{start_local:%H:%M %Z}–{end_local:%H:%M %Z}"
    reason = f"scheduled: maintenance window {hours} {zone.key}, starts {_local(slot, zone)}"
    return InstallPlan(slot, end, None, reason)


def current_install_plan(
    update_type: UpdateType,
    install_at: datetime,
    window_end: datetime | None,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    idle_seconds: int = DEFAULT_IDLE_SECONDS,
) -> InstallPlan:
    """The plan a pending row should carry at ``now``: the stored one, or the next window's.

    "A device that missed its window waits for the following one" (DESIGN.md
    section 4). The server calls this when it hands a pending row to a device:

    * instant: the stored plan stays valid (the device installs at its check).
    * scheduled and urgent: while ``now < window_end`` the stored plan stays
      valid (a late device may still install inside its window); once the window
      has closed, the row is re-planned with :func:`plan_install` for the next
      window, whose slot becomes the new ``install_at`` (for urgent, the new
      deadline: a device that was off during its deadline window is not forced
      to install in the middle of the day; idle time still lets it install
      earlier).
    * a stored scheduled/urgent plan without ``window_end`` (should not happen)
      is re-planned.

    Args:
        update_type: the row's (effective) update type.
        install_at: the stored ``install_at`` (aware).
        window_end: the stored window end (aware), or None.
        now: an aware datetime, the server's clock.
        timezone: IANA timezone of the device.
        device_uuid: the device's uuid.
        window_start: local wall-clock start of windows, naive (default 02:00).
        window_seconds: window length in seconds (1 to 86400, default 3 h).
        idle_seconds: urgent: continuous idle time in seconds (default 1 h).

    Returns:
        The stored plan (same instants, a fresh ``reason``) while valid, else the
        next window's plan; ``install_at`` changed iff the row must be updated.

    Raises:
        ScheduleError: as :func:`plan_install`, or a naive ``install_at``/``window_end``.
    """
    kind = _update_type(update_type)
    check_aware("install_at", install_at)
    check_aware("now", now)
    zone = device_zone(timezone)
    _idle_required(idle_seconds)
    if kind is UpdateType.INSTANT:
        return InstallPlan(
            install_at.astimezone(UTC), None, None, "instant: installs at its next check"
        )
    if window_end is not None:
        check_aware("window_end", window_end)
        if now < window_end:
            end = window_end.astimezone(UTC)
            slot = install_at.astimezone(UTC)
            # The stored row does not keep its window start; the window length
            # gives it back (or the slot, should the setting have changed since).
            start = min(slot, end - timedelta(seconds=check_window_seconds(window_seconds)))
            return _window_plan(kind, start, end, slot, zone, idle_seconds)
    return plan_install(
        kind,
        now=now,
        timezone=timezone,
        device_uuid=device_uuid,
        window_start=window_start,
        window_seconds=window_seconds,
        idle_seconds=idle_seconds,
    )


# --------------------------------------------------------------------------- agent side


@dataclass(frozen=True, slots=True)
class InstallDecision:
    """The agent's answer to "may I install now?".

    Attributes:
        install_now: True to start downloading/installing now.
        reason: one line for the agent's log.
        wake_at: when asking again is worthwhile (aware UTC, on the server's
            clock), or None when only the next heartbeat can change the answer.
    """

    install_now: bool
    reason: str
    wake_at: datetime | None


def decide_install(
    directive: InstallDirective, *, now: datetime, idle_seconds: float | None
) -> InstallDecision:
    """The one policy call of the agent: may the device install ``directive`` at ``now``?

    ``now`` is the server's clock as the agent knows it: ``server_time`` from the
    last heartbeat response plus the monotonic time elapsed since (a Raspberry Pi
    has no real-time clock; DESIGN.md section 4). The rules:

    * instant: install now.
    * scheduled: install if ``install_at <= now < window_end``; before the slot,
      wait (``wake_at = install_at``); after the window, do not install: the
      server re-plans the row for the next window (``wake_at`` None).
    * urgent: install if the application has been idle for at least
      ``idle_seconds_required`` (default 1 h when the directive omits it), or at
      the deadline: ``install_at <= now`` while the window is open (``now <
      window_end``, or no ``window_end``). Otherwise ``wake_at`` is the earlier
      of the deadline and the moment the idle requirement would be met if the
      application stays idle. A deadline whose window has closed no longer
      forces an install (the device was off during it; the server re-plans the
      deadline for the next window); idle time still does.

    ``idle_seconds`` None means the agent has no idle measurement (the
    application never recorded activity): the idle path is closed and an urgent
    update installs at its deadline. Treating "never recorded" as idle could
    restart an application in use that simply does not report activity; an agent
    that wants the other behaviour passes the time since it started.

    The directive's ``status`` is not consulted: resuming an interrupted
    download or install is the agent's state machine's business.

    Args:
        directive: the pending install directive from the heartbeat response.
        now: aware datetime on the server's clock.
        idle_seconds: seconds the application has been idle continuously,
            measured with a monotonic clock, or None when unknown.

    Returns:
        The decision.

    Raises:
        ScheduleError: a naive ``now`` or directive datetime, or a negative
            ``idle_seconds``.
    """
    check_aware("now", now)
    install_at = check_aware("install_at", directive.install_at)
    window_end = directive.window_end
    if window_end is not None:
        check_aware("window_end", window_end)
    if idle_seconds is not None and (math.isnan(idle_seconds) or idle_seconds < 0):
        raise ScheduleError(
            f"idle time must be a non-negative number of seconds, got {idle_seconds!r}"
        )
    version = directive.version
    at_utc = install_at.astimezone(UTC)
    now_utc = now.astimezone(UTC)

    if directive.update_type is UpdateType.INSTANT:
        return InstallDecision(True, f"instant update {version}: install now", None)

    window_open = window_end is None or now < window_end
    if directive.update_type is UpdateType.SCHEDULED:
        if now < install_at:
            return InstallDecision(
                False,
                f"scheduled update {version}: waiting for its slot at {at_utc:%Y-%m-%d %H:%M} UTC",
                at_utc,
            )
        if window_open:
            return InstallDecision(
                True, f"scheduled update {version}: in its maintenance window", None
            )
        assert window_end is not None  # window_open is False only with a window_end
        return InstallDecision(
            False,
            f"scheduled update {version}: its maintenance window closed at "
            f"{window_end.astimezone(UTC):%Y-%m-%d %H:%M} UTC; the server re-plans it "
            "for the next window",
            None,
        )

    required = directive.idle_seconds_required
    if required is None:
        required = DEFAULT_IDLE_SECONDS
    if idle_seconds is not None and idle_seconds >= required:
        return InstallDecision(
            True,
            f"urgent update {version}: application idle for {describe_duration(idle_seconds)} "
            f"(needs {describe_duration(required)})",
            None,
        )
    if install_at <= now and window_open:
        return InstallDecision(
            True, f"urgent update {version}: deadline {at_utc:%Y-%m-%d %H:%M} UTC reached", None
        )
    idle_wake = (
        now_utc + timedelta(seconds=required - idle_seconds) if idle_seconds is not None else None
    )
    if install_at > now:
        wake_at = at_utc if idle_wake is None else min(at_utc, idle_wake)
        idle_text = (
            "idle time unknown"
            if idle_seconds is None
            else f"idle for {describe_duration(idle_seconds)} of {describe_duration(required)}"
        )
        return InstallDecision(
            False,
            f"urgent update {version}: {idle_text}; deadline {at_utc:%Y-%m-%d %H:%M} UTC",
            wake_at,
        )
    return InstallDecision(
        False,
        f"urgent update {version}: its deadline window has closed; waiting for "
        f"{describe_duration(required)} idle until the server re-plans it",
        idle_wake,
    )


def check_urgency_evidence(
    claimed: UpdateType,
    *,
    offered: Version,
    running: Version | None,
    evidence: UrgencyEvidence,
    signed_version: Version,
    signed_type: UpdateType,
) -> str | None:
    """Why a superseded update does not prove an offer's timing, or None if it does.

    Supersession (DESIGN.md section 4): a device installs the highest pending
    version with the most urgent timing among the rows it supersedes, since
    packages are cumulative. The server names the superseded update in the
    directive's ``urgency_from``; the device verifies that update's manifest
    and signature with its keyring (the signature check is the caller's), and
    passes here what the signed manifest says. The evidence proves
    ``claimed`` only if all hold:

    * the signed manifest is for the version the server named (``evidence.version``);
    * that version is newer than ``running`` (the device has not installed it:
      a fix it already runs needs no hurry) and older than ``offered`` (the
      offered package supersedes it);
    * its signed type is at least as urgent as ``claimed`` (instant > urgent >
      scheduled).

    Args:
        claimed: the directive's ``update_type``.
        offered: the version of the package the directive offers.
        running: the version the device runs, or None if none.
        evidence: the server's ``urgency_from``.
        signed_version: the version in the evidence's verified manifest.
        signed_type: the ``update_type`` in the evidence's verified manifest.

    Returns:
        None when the evidence proves ``claimed``; otherwise the reason, for the log.
    """
    claimed_type = _update_type(claimed)
    evidence_type = _update_type(signed_type)
    if signed_version != evidence.version:
        return (
            f"its signed manifest is for {signed_version}, not the {evidence.version} "
            "the server named"
        )
    if running is not None and signed_version <= running:
        return f"{signed_version} is not newer than the running {running}"
    if signed_version >= offered:
        return f"{signed_version} is not older than the offered {offered}"
    if _URGENCY[evidence_type] < _URGENCY[claimed_type]:
        return f"{signed_version} is signed {evidence_type}, less urgent than {claimed_type}"
    return None


def check_offered_window(directive: InstallDirective) -> str | None:
    """Why a scheduled directive's window is not a maintenance window, or None if it is.

    The time of day of the window is a fleet setting the server holds
    (``window_start``, ``window_seconds``), so the device cannot tell an honest
    window from a chosen one by its hour. It can tell that it is *a* window:
    a scheduled directive names where its window ends (``window_end``), after
    the device's slot (``install_at``), and no longer than the longest window
    a server may be configured with, :data:`MAX_WINDOW_SECONDS` after it (the
    slot lies inside the window). Anything else is a server fault. A device
    that pins its own window (:func:`plan_in_own_window`) does not use the
    server's at all.

    Args:
        directive: the server's directive (already validated); other types pass.

    Returns:
        None for a plausible window, or a scheduled directive that is not
        scheduled; otherwise the reason, for the log and the report.
    """
    if _update_type(directive.update_type) is not UpdateType.SCHEDULED:
        return None
    install_at = check_aware("install_at", directive.install_at)
    window_end = directive.window_end
    if window_end is None:
        return "a scheduled offer without a window_end (no maintenance window)"
    length = (check_aware("window_end", window_end) - install_at).total_seconds()
    if length <= 0:
        return (
            f"its window_end {window_end.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC is not after "
            f"its install_at {install_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
    if length > MAX_WINDOW_SECONDS:
        return (
            f"its window is open for {describe_duration(length)} from install_at, longer than "
            f"any maintenance window ({describe_duration(MAX_WINDOW_SECONDS)})"
        )
    return None


def _own_plan(
    kind: UpdateType,
    directive: InstallDirective,
    previous: InstallDirective | None,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    window_start: time,
    window_seconds: int,
) -> InstallDirective:
    """``directive`` with the device's own plan for ``kind``; ``previous`` kept while open."""
    same = (
        previous is not None
        and previous.update_id == directive.update_id
        and previous.version == directive.version
        and previous.update_type is kind
    )
    if same and previous is not None:
        plan = current_install_plan(
            kind,
            previous.install_at,
            previous.window_end,
            now=now,
            timezone=timezone,
            device_uuid=device_uuid,
            window_start=window_start,
            window_seconds=window_seconds,
        )
    else:
        plan = plan_install(
            kind,
            now=now,
            timezone=timezone,
            device_uuid=device_uuid,
            window_start=window_start,
            window_seconds=window_seconds,
        )
    return directive.model_copy(
        update={
            "update_type": kind,
            "install_at": plan.install_at,
            "window_end": plan.window_end,
            "idle_seconds_required": plan.idle_seconds_required,
            "urgency_from": None,
        }
    )


def bound_by_signed_type(
    directive: InstallDirective,
    signed_type: UpdateType,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    previous: InstallDirective | None = None,
    proven_type: UpdateType | None = None,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> InstallDirective:
    """The directive the agent may act on: never sooner than a signature proves.

    The update type is signed in the manifest (DESIGN.md section 3): a server
    may make an install *later* than signed, never *more urgent* (instant >
    urgent > scheduled) than a signature proves the operator wanted. Two
    signatures can prove a timing: the offered package's own (``signed_type``)
    and, after supersession (DESIGN.md section 4: the highest pending version
    installs with the most urgent timing among the rows it supersedes), the
    signed type of a superseded update the device has verified
    (``proven_type``: only after :func:`check_urgency_evidence` accepted it).

    When the server's ``update_type`` is not more urgent than the more urgent
    of the two, ``directive`` is returned as it is. Otherwise its timing
    fields belong to a type no signature supports and are not used: the
    device plans ``signed_type`` itself, with :func:`plan_install` in its own
    ``timezone`` and its own window (``window_start``, ``window_seconds``: the
    defaults of DESIGN.md section 4, window at 02:00 local, 3 h long, unless
    the device pins its own; urgent after 1 h idle), and keeps that plan while
    its window is open (:func:`current_install_plan` given ``previous``, the
    directive this function returned last time for the same update).

    Args:
        directive: the server's directive (already validated).
        signed_type: ``update_type`` of the verified manifest of that package.
        now: aware datetime on the server's clock.
        timezone: the device's IANA timezone (agent configuration).
        device_uuid: the device's uuid (its slot within the window).
        previous: the bounded directive from an earlier call for this update.
        proven_type: ``update_type`` of a verified superseded update that
            :func:`check_urgency_evidence` accepted, or None.
        window_start: device-local start of the device's own window, naive.
        window_seconds: length of the device's own window in seconds.

    Returns:
        ``directive``, or a copy with ``update_type=signed_type`` and the
        device's own ``install_at``, ``window_end`` and ``idle_seconds_required``.

    Raises:
        ScheduleError: a naive ``now``, an unknown timezone or a bad window.
    """
    offered = _update_type(directive.update_type)
    signed = _update_type(signed_type)
    allowed = signed if proven_type is None else most_urgent((signed, proven_type))
    if _URGENCY[offered] <= _URGENCY[allowed]:
        return directive
    return _own_plan(
        signed,
        directive,
        previous,
        now=now,
        timezone=timezone,
        device_uuid=device_uuid,
        window_start=window_start,
        window_seconds=window_seconds,
    )


def plan_in_own_window(
    directive: InstallDirective,
    *,
    now: datetime,
    timezone: str,
    device_uuid: uuid.UUID | str,
    window_start: time,
    window_seconds: int,
    previous: InstallDirective | None = None,
) -> InstallDirective:
    """A scheduled directive planned in the device's own, pinned maintenance window.

    Without a pin the device follows the server's window for a scheduled
    update (:func:`check_offered_window` only checks that it is one): the
    window's time of day is a fleet setting the server holds. A device that
    pins its own window (agent settings ``window_start``, ``window_seconds``)
    ignores the server's ``install_at`` and ``window_end`` and plans the
    update itself, as the server would (:func:`plan_install`, its slot in the
    next window of its own ``timezone``), on the server's clock; the plan is
    kept while its window is open (``previous``: what this function returned
    last time for the same update). Other update types are returned as they
    are (:func:`bound_by_signed_type` bounds those).

    Args:
        directive: the directive the device would otherwise act on.
        now: aware datetime on the server's clock.
        timezone: the device's IANA timezone (agent configuration).
        device_uuid: the device's uuid (its slot within the window).
        window_start: device-local start of the pinned window, naive.
        window_seconds: its length in seconds (1 to :data:`MAX_WINDOW_SECONDS`).
        previous: the directive from an earlier call for this update.

    Returns:
        ``directive`` unless it is scheduled; else a copy with the device's
        own ``install_at`` and ``window_end``.

    Raises:
        ScheduleError: a naive ``now``, an unknown timezone or a bad window.
    """
    if _update_type(directive.update_type) is not UpdateType.SCHEDULED:
        return directive
    return _own_plan(
        UpdateType.SCHEDULED,
        directive,
        previous,
        now=now,
        timezone=timezone,
        device_uuid=device_uuid,
        window_start=window_start,
        window_seconds=window_seconds,
    )


# --------------------------------------------------------------------------- dry run


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the rollout plan needs to know about one targeted device.

    Attributes:
        device_uuid: the device's uuid.
        device_name: its display name, if any.
        timezone: its IANA timezone.
        last_seen: its last heartbeat (aware, server clock), None if never seen.
        current_version: the ``vX.Y.Z`` it runs, None if unknown.
    """

    device_uuid: uuid.UUID
    device_name: str | None
    timezone: str
    last_seen: datetime | None
    current_version: str | None


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Whether and when one device gets an update, for ``--dry-run`` and ``updates plan``.

    Attributes:
        device_uuid: the device's uuid.
        device_name: its display name, if any.
        gets_row: whether publishing creates its ``device_updates`` row now.
        install_at_utc: when it installs (urgent: the deadline), aware UTC; None
            when it is not known at publish time.
        install_at_local: the same instant in the device's timezone.
        timezone: the device's IANA timezone.
        reason: one line saying why.
    """

    device_uuid: uuid.UUID
    device_name: str | None
    gets_row: bool
    install_at_utc: datetime | None
    install_at_local: datetime | None
    timezone: str
    reason: str


def plan_rollout(
    update_type: UpdateType,
    version: str,
    devices: Iterable[DeviceFacts],
    *,
    now: datetime,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    idle_seconds: int = DEFAULT_IDLE_SECONDS,
    online_within_seconds: int = ONLINE_WITHIN_SECONDS,
) -> list[DevicePlan]:
    """Who would install ``version`` when, if it were published at ``now``.

    Pure preview of the publish rules (DESIGN.md section 4), one plan per device
    in input order:

    * a device that already runs ``version`` or newer gets no row
      ("already runs v1.2.3");
    * instant: devices seen within the last 300 s get a row and install at their
      next check; the others get no row now, and get it at their next heartbeat
      (reconciliation);
    * scheduled/urgent: every device gets a row; the plan is :func:`plan_install`'s,
      with a note for devices that are offline.

    Args:
        update_type: the update type to publish.
        version: the version to publish, ``vX.Y.Z``.
        devices: the targeted devices.
        now: an aware datetime, the server's clock.
        window_start: local wall-clock start of windows, naive (default 02:00).
        window_seconds: window length in seconds (default 3 h).
        idle_seconds: urgent: continuous idle time in seconds (default 1 h).
        online_within_seconds: instant: the online threshold in seconds
            (inclusive, default 300); pass the server's setting.

    Returns:
        One :class:`DevicePlan` per device.

    Raises:
        VersionError: ``version`` is not ``vX.Y.Z``.
        ScheduleError: naive ``now``, unknown update type or device timezone.
    """
    kind = _update_type(update_type)
    target = Version.parse(version)
    check_aware("now", now)
    plans: list[DevicePlan] = []
    for device in devices:
        zone = device_zone(device.timezone)
        running = _parse_or_none(device.current_version)

        def plan(gets_row: bool, at: datetime | None, reason: str) -> DevicePlan:
            return _device_plan(device, zone, gets_row, at, reason)  # noqa: B023 - called at once

        if running is not None and running >= target:
            newer = "" if running == target else f" (newer than {target})"
            plans.append(plan(False, None, f"already runs {running}{newer}"))
            continue
        online = is_online(device.last_seen, now, online_within_seconds)
        if device.last_seen is None:
            absence = "never seen"
        else:
            absence = f"offline for {describe_duration((now - device.last_seen).total_seconds())}"
        if kind is UpdateType.INSTANT:
            if online:
                plans.append(plan(True, now.astimezone(UTC), "online: installs at its next check"))
            else:
                plans.append(
                    plan(
                        False,
                        None,
                        f"{absence} (> {online_within_seconds} s): gets it at its next heartbeat "
                        "and installs then",
                    )
                )
            continue
        result = plan_install(
            kind,
            now=now,
            timezone=device.timezone,
            device_uuid=device.device_uuid,
            window_start=window_start,
            window_seconds=window_seconds,
            idle_seconds=idle_seconds,
        )
        reason = result.reason
        if not online:
            reason += f"; {absence}: installs only if back before its window ends, else a later one"
        plans.append(plan(True, result.install_at, reason))
    return plans


def _device_plan(
    device: DeviceFacts, zone: ZoneInfo, gets_row: bool, at: datetime | None, reason: str
) -> DevicePlan:
    local = at.astimezone(zone) if at is not None else None
    return DevicePlan(
        device.device_uuid, device.device_name, gets_row, at, local, device.timezone, reason
    )


def _parse_or_none(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version.parse(text)
    except VersionError:
        return None
