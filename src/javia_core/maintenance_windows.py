"""Maintenance-window arithmetic in device-local time (DESIGN.md section 4). Pure: no I/O.

A window starts at 02:00 device-local time (:data:`DEFAULT_WINDOW_START`)
and lasts ``window_seconds`` of real elapsed time. A 02:00 that does not
exist (spring-forward gap) means the first instant after the gap; one that
occurs twice (fall-back) means the first occurrence (:func:`window_start_on`,
:func:`next_window_start`, :func:`current_window`). Each device starts at a
stable offset from the SHA-256 of its uuid, over the first two thirds of the
window (:func:`window_offset_seconds`). The shared input checks (aware
datetimes, timezones, window lengths, device uuids) live here too.

The rules that use these windows, per update type, are
:mod:`javia_core.scheduling`, which re-exports every public name here.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from javia_core.errors import ScheduleError
from javia_core.models import load_timezone

__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "DEFAULT_WINDOW_START",
    "MAX_WINDOW_SECONDS",
    "OFFSET_SPREAD_DENOMINATOR",
    "OFFSET_SPREAD_NUMERATOR",
    "check_aware",
    "check_window_seconds",
    "check_window_time",
    "current_window",
    "device_zone",
    "latest_window_start",
    "next_window_start",
    "parse_device_uuid",
    "window_offset_seconds",
    "window_start_on",
]

#: Local wall-clock start of every maintenance window (naive).
DEFAULT_WINDOW_START = time(2, 0)
#: Default window length, in seconds (3 h).
DEFAULT_WINDOW_SECONDS = 3 * 3600

#: Device offsets are spread over the first 2/3 of the window (see
#: :func:`window_offset_seconds`): the last third is the margin in which a
#: device that starts at its offset downloads, installs and health-checks.
OFFSET_SPREAD_NUMERATOR = 2
OFFSET_SPREAD_DENOMINATOR = 3

#: A window may last at most one day (seconds); longer windows would overlap
#: the next day's.
MAX_WINDOW_SECONDS = 24 * 3600


def check_aware(name: str, value: datetime) -> datetime:
    """Return ``value`` if it is an aware datetime, else raise ScheduleError naming ``name``."""
    if not isinstance(value, datetime):
        raise ScheduleError(
            f"{name} must be a datetime with a timezone, e.g. 2027-03-14T02:00:00+00:00; "
            f"got {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{name} must be timezone-aware (naive datetimes are ambiguous), "
            f"e.g. 2027-03-14T02:00:00+00:00; got {value.isoformat()}"
        )
    return value


def device_zone(timezone: str) -> ZoneInfo:
    """The ZoneInfo of a device's stored IANA name (lenient for names stored before
    registration refused non-canonical ones); ScheduleError naming an example otherwise."""
    return load_timezone(timezone)


def check_window_time(at: time) -> time:
    """Return ``at`` if it is a naive wall-clock time, else raise ScheduleError."""
    if not isinstance(at, time) or at.tzinfo is not None:
        raise ScheduleError(
            "window start must be a local wall-clock time without timezone, e.g. time(2, 0)"
        )
    return at


def check_window_seconds(window_seconds: int) -> int:
    """Return ``window_seconds`` if it is a whole number from 1 to MAX_WINDOW_SECONDS, else raise ScheduleError."""
    if (
        isinstance(window_seconds, bool)
        or not isinstance(window_seconds, int)
        or not 0 < window_seconds <= MAX_WINDOW_SECONDS
    ):
        raise ScheduleError(
            f"window length must be a whole number of seconds from 1 to {MAX_WINDOW_SECONDS}, "
            f"e.g. 10800 for 3 h; got {window_seconds!r}"
        )
    return window_seconds


def parse_device_uuid(device_uuid: uuid.UUID | str) -> uuid.UUID:
    """``device_uuid`` as a UUID; ScheduleError showing the expected form otherwise."""
    if isinstance(device_uuid, uuid.UUID):
        return device_uuid
    try:
        return uuid.UUID(str(device_uuid))
    except ValueError:
        raise ScheduleError(
            f"invalid device uuid {device_uuid!r}: expected the form "
            "123e4567-e89b-12d3-a456-426614174000"
        ) from None


def _wall(instant_seconds: int, zone: ZoneInfo) -> datetime:
    """Naive local wall-clock time of a whole-second POSIX timestamp."""
    return datetime.fromtimestamp(instant_seconds, zone).replace(tzinfo=None)


def window_start_on(local_date: date, timezone: str, at: time = DEFAULT_WINDOW_START) -> datetime:
    """The maintenance-window start belonging to one local calendar date.

    That is the earliest instant whose local wall clock reads ``local_date`` ``at``
    or later (DESIGN.md section 4): normally ``at`` itself; the first occurrence
    when ``at`` occurs twice (fall-back); the first instant after the gap when the
    gap swallowed ``at`` (spring-forward, or a skipped day such as
    Pacific/Apia on 2011-12-30, whose window starts at 2011-12-31 00:00 local).

    Args:
        local_date: the device-local calendar date.
        timezone: IANA timezone of the device, e.g. ``Europe/Berlin``.
        at: local wall-clock start of the window, naive (default 02:00).

    Returns:
        The window start as an aware UTC datetime.

    Raises:
        ScheduleError: unknown timezone, an ``at`` with a tzinfo, or a date so far
            out that it cannot be represented.
    """
    zone = device_zone(timezone)
    check_window_time(at)
    try:
        return _resolve(local_date, at, zone)
    except OverflowError:
        raise ScheduleError(
            f"date {local_date.isoformat()} is out of range for scheduling"
        ) from None


def _resolve(local_date: date, at: time, zone: ZoneInfo) -> datetime:
    wall = datetime.combine(local_date, at)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        # The wall time exists; with fold=0 zoneinfo gives its first occurrence (PEP 495).
        return first
    # A gap: fold=0 applies the offset before the transition, fold=1 the one after,
    # so the transition instant lies in (after_offset, before_offset]. Offsets and
    # transitions in the zone database are whole seconds: bisect for the earliest
    # second whose wall clock has reached ``wall``.
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low = math.floor(min(first, second).timestamp())  # wall clock still before ``wall``
    high = math.ceil(max(first, second).timestamp())  # wall clock at or past ``wall``
    if _wall(low, zone) >= wall or _wall(high, zone) < wall:  # pragma: no cover - defensive
        raise ScheduleError(f"cannot resolve {wall.isoformat()} in timezone {zone.key}")
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _candidates(around: datetime, zone: ZoneInfo, at: time, days: range) -> list[datetime]:
    local_date = around.astimezone(zone).date()
    return [_resolve(local_date + timedelta(days=d), at, zone) for d in days]


def next_window_start(after: datetime, timezone: str, at: time = DEFAULT_WINDOW_START) -> datetime:
    """Earliest maintenance-window start strictly later than ``after`` (DESIGN.md section 4).

    A window starts at ``at`` (02:00) device-local time. A 02:00 inside a
    spring-forward gap means the first instant after the gap; a 02:00 that occurs
    twice (fall-back) means the first occurrence, so an ``after`` between the two
    occurrences gets the next day's window. ``after`` exactly at a window start
    gets the next one.

    Consecutive window starts are 24 h apart, except around a UTC-offset change:
    at most 24 h plus that night's backward shift (25 h for a 1 h fall-back; the
    longest in the zone database for 1990-2090 is 31 h, Antarctica/Vostok in
    1994), and as little as 2 h when a whole day is skipped (Pacific/Apia,
    2011-12-30). See ``docs/update-types.md``.

    Args:
        after: an aware datetime (any offset).
        timezone: IANA timezone of the device, e.g. ``Europe/Berlin``.
        at: local wall-clock start of the window, naive (default 02:00).

    Returns:
        The window start as an aware UTC datetime, strictly later than ``after``.

    Raises:
        ScheduleError: (a ``ValueError``) when ``after`` is naive, the timezone is
            unknown (the message names ``Europe/Berlin`` as an example), ``at``
            carries a tzinfo, or the date is out of range.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> est = timezone(timedelta(hours=-5))
        >>> next_window_start(datetime(2027, 3, 13, 20, 0, tzinfo=est), "America/New_York")
        datetime.datetime(2027, 3, 14, 7, 0, tzinfo=datetime.timezone.utc)
    """
    check_aware("after", after)
    zone = device_zone(timezone)
    check_window_time(at)
    try:
        candidates = _candidates(after, zone, at, range(-1, 4))
    except OverflowError:
        raise ScheduleError(f"{after.isoformat()} is out of range for scheduling") from None
    return min(c for c in candidates if c > after)


def latest_window_start(now: datetime, zone: ZoneInfo, at: time) -> datetime:
    """The latest window start at or before ``now`` (aware UTC).

    Raises:
        OverflowError: ``now`` is too close to the ends of the datetime range.
    """
    return max(c for c in _candidates(now, zone, at, range(-3, 2)) if c <= now)


def current_window(
    now: datetime,
    timezone: str,
    *,
    window_start: time = DEFAULT_WINDOW_START,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> tuple[datetime, datetime] | None:
    """The maintenance window open at ``now``, if any.

    Args:
        now: an aware datetime.
        timezone: IANA timezone of the device.
        window_start: local wall-clock start of windows, naive (default 02:00).
        window_seconds: window length in seconds (1 to 86400).

    Returns:
        ``(start, end)`` as aware UTC datetimes with ``start <= now < end`` for the
        latest window that started at or before ``now``, or None outside a window.

    Raises:
        ScheduleError: naive ``now``, unknown timezone, or a bad window length.
    """
    check_aware("now", now)
    zone = device_zone(timezone)
    check_window_time(window_start)
    check_window_seconds(window_seconds)
    try:
        start = latest_window_start(now, zone, window_start)
    except OverflowError:
        raise ScheduleError(f"{now.isoformat()} is out of range for scheduling") from None
    end = start + timedelta(seconds=window_seconds)
    return (start, end) if now < end else None


def window_offset_seconds(
    device_uuid: uuid.UUID | str, window_seconds: int = DEFAULT_WINDOW_SECONDS
) -> int:
    """Stable per-device start offset inside a window, in whole seconds, in [0, window_seconds).

    The offset is SHA-256 of the canonical lower-case uuid string
    (``123e4567-e89b-12d3-a456-426614174000``), read as a big-endian integer,
    modulo the spread: the first 2/3 of the window (``window_seconds * 2 // 3``,
    at least 1). A fleet in one timezone therefore spreads its downloads evenly
    over the first two hours of a 3 h window, and the device with the latest
    offset still has an hour to download, install and health-check
    (DESIGN.md section 4). The same uuid always gets the same offset, on the
    server and on the device, whatever the Python version or process.

    Args:
        device_uuid: the device's uuid, as a UUID or any string ``uuid.UUID`` accepts.
        window_seconds: window length in seconds (1 to 86400).

    Returns:
        The offset in seconds, ``0 <= offset < max(1, window_seconds * 2 // 3)``.

    Raises:
        ScheduleError: an unparsable uuid or a bad window length.
    """
    parsed = parse_device_uuid(device_uuid)
    check_window_seconds(window_seconds)
    spread = max(1, window_seconds * OFFSET_SPREAD_NUMERATOR // OFFSET_SPREAD_DENOMINATOR)
    digest = hashlib.sha256(str(parsed).encode("ascii")).digest()
    return int.from_bytes(digest, "big") % spread
