"""``javia_agent.retry_policy``: which faults are transient, the backoff, the deadline."""

from __future__ import annotations

import errno
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_agent.errors import CommandFailedError, DiskSpaceError, NetworkError
from javia_agent.retry_policy import RetrySchedule, failure_class_of, transient_reason
from javia_core.errors import SignatureError
from javia_core.failures import FailureClass
from javia_core.models import UpdateType

_PIP_DOWN = (
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) "
    "after connection broken by 'NewConnectionError(\"Failed to establish a new connection: "
    "[Errno 111] Connection refused\")': /simple/voice-engine/\n"
    "ERROR: No matching distribution found for voice-engine==2.0"
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DiskSpaceError("not enough disk space"), FailureClass.DISK_SPACE),
        (OSError(errno.ENOSPC, "No space left on device"), FailureClass.DISK_SPACE),
        (NetworkError("cannot reach the server"), FailureClass.NETWORK),
        (
            CommandFailedError("pip", kind="pip", exit_code=1, output=_PIP_DOWN),
            FailureClass.DEPENDENCIES,
        ),
        (
            CommandFailedError(
                "apt",
                kind="apt",
                exit_code=100,
                output="E: Failed to fetch http://deb/x.deb  Temporary failure resolving 'deb'",
            ),
            FailureClass.APT,
        ),
        (
            CommandFailedError(
                "pip", kind="pip", exit_code=1, output="OSError: [Errno 28] No space left on device"
            ),
            FailureClass.DISK_SPACE,
        ),
    ],
)
def test_transient_faults(error: BaseException, expected: FailureClass) -> None:
    found = transient_reason(error)
    assert found is not None and found[0] is expected


@pytest.mark.parametrize(
    "error",
    [
        CommandFailedError(
            "pip", kind="pip", exit_code=1, output="ERROR: No matching distribution found for x==9"
        ),
        CommandFailedError(
            "apt", kind="apt", exit_code=100, output="E: Unable to locate package sox"
        ),
        CommandFailedError("setup", kind="setup", exit_code=1, output="Connection refused"),
        SignatureError("bad signature"),
        OSError(errno.EACCES, "Permission denied"),
    ],
)
def test_permanent_faults(error: BaseException) -> None:
    assert transient_reason(error) is None


def test_classes_of_permanent_faults() -> None:
    assert failure_class_of(SignatureError("x"), "downloading") is FailureClass.SIGNATURE
    setup = CommandFailedError("setup", kind="setup", exit_code=2)
    assert failure_class_of(setup, "staging") is FailureClass.SETUP
    assert failure_class_of(None, "switching") is FailureClass.OTHER


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_backoff_doubles_is_jittered_and_capped(tries: int, seed: int) -> None:
    schedule = RetrySchedule(base_seconds=30, max_seconds=1800, rng=random.Random(seed))
    ceiling = min(1800.0, 30.0 * 2 ** (tries - 1))
    assert ceiling / 2 <= schedule.delay_seconds(tries) <= ceiling


def test_the_deadline_is_the_window_end_for_scheduled_updates_else_the_setting() -> None:
    first = datetime(2027, 1, 16, 2, 10, tzinfo=UTC)
    window_end = datetime(2027, 1, 16, 5, 0, tzinfo=UTC)
    schedule = RetrySchedule(deadline_seconds=3600)
    scheduled = schedule.deadline(first, update_type=UpdateType.SCHEDULED, window_end=window_end)
    assert scheduled == window_end
    urgent = schedule.deadline(first, update_type=UpdateType.URGENT, window_end=window_end)
    assert urgent == first + timedelta(hours=1)
    # A first fault after the window's end still gets its one try.
    late = window_end + timedelta(minutes=5)
    assert schedule.deadline(late, update_type=UpdateType.SCHEDULED, window_end=window_end) == late
