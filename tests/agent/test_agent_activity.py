"""Idle time: measured on a monotonic clock, immune to wall-clock jumps (DESIGN.md section 7)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from javia_agent.activity import (
    ACTIVITY_DIR_MODE,
    ACTIVITY_FILE_ENV,
    MAX_ACTIVITY_BYTES,
    IdleTracker,
    UnsafeActivityFileError,
    prepare_activity_dir,
    read_activity_file,
    record_activity,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_time_ignores_wall_clock_jumps_in_the_activity_file(tmp_path: Path) -> None:
    path = tmp_path / "activity.json"
    clock = FakeClock()
    tracker = IdleTracker(path, monotonic=clock)
    wall = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    record_activity(path, now=wall)
    assert tracker.idle_seconds() == 0.0
    clock.now += 600
    assert tracker.idle_seconds() == 600.0

    # NTP steps the wall clock back a year, and the app records activity then:
    record_activity(path, now=wall - timedelta(days=365))
    assert tracker.idle_seconds() == 0.0  # activity is activity, whatever its wall time
    clock.now += 1200
    # ... and forward ten years: idle time is still what the monotonic clock says.
    assert tracker.idle_seconds() == 1200.0
    record_activity(path, now=wall + timedelta(days=3650))
    assert tracker.idle_seconds() == 0.0
    clock.now += 30
    assert tracker.idle_seconds() == 30.0


def test_unchanged_content_is_not_activity() -> None:
    clock = FakeClock()
    content = {"value": b'{"counter": 1}'}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    assert tracker.idle_seconds() == 0.0
    clock.now += 3599
    assert tracker.idle_seconds() == 3599.0
    content["value"] = b'{"counter": 2}'
    clock.now += 1
    assert tracker.idle_seconds() == 0.0


def test_idle_time_is_unknown_until_the_application_ever_recorded_activity() -> None:
    clock = FakeClock()
    content: dict[str, bytes | None] = {"value": None}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    assert tracker.idle_seconds() is None
    clock.now += 7200
    assert tracker.idle_seconds() is None
    content["value"] = b"{}"
    assert tracker.idle_seconds() == 0.0


def test_polling_between_checks_notes_the_time_of_the_change() -> None:
    clock = FakeClock()
    content = {"value": b"1"}
    tracker = IdleTracker(Path("unused"), monotonic=clock, reader=lambda path: content["value"])
    tracker.poll()
    clock.now += 100
    content["value"] = b"2"
    assert tracker.poll() is True  # the agent's sleep loop polls every few seconds
    clock.now += 500
    assert tracker.idle_seconds() == 500.0


def test_record_activity_counts_up_and_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "activity.json"
    monkeypatch.setenv(ACTIVITY_FILE_ENV, str(path))
    assert record_activity() == path
    record_activity()
    body = json.loads(path.read_text())
    assert body["counter"] == 2 and "wall_time" in body
    assert [p.name for p in path.parent.iterdir()] == ["activity.json"]


# --------------------------------------------------------------------------- a hostile activity directory
#
# The application's group may write the activity directory, so whoever runs as
# that group may plant a FIFO, a symbolic link or a hard link where the record
# belongs. The agent (root) must neither block, nor follow, nor stop.


def _in_subprocess(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a blocked open() shows as a 10 s time-out."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=10,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked for 10 s: {code}")


def test_a_fifo_in_place_of_the_record_neither_blocks_the_agent_nor_the_application(
    tmp_path: Path,
) -> None:
    path = tmp_path / "activity" / "activity.json"
    path.parent.mkdir()
    os.mkfifo(path)

    polled = _in_subprocess(
        "from javia_agent.activity import IdleTracker\n"
        f"print(IdleTracker({str(path)!r}).idle_seconds())"
    )
    assert polled.returncode == 0, polled.stderr
    assert polled.stdout.strip() == "None"  # no record: never taken for idle
    assert "is a FIFO: refused" in polled.stderr  # the agent's log line

    recorded = _in_subprocess(
        "from javia_agent.cli import app; app(['activity'])", env={ACTIVITY_FILE_ENV: str(path)}
    )
    assert recorded.returncode == 0, recorded.stderr
    assert stat.S_ISREG(path.lstat().st_mode)  # the FIFO was replaced, not read
    assert json.loads(path.read_text())["counter"] == 1


def test_a_planted_symlink_is_neither_read_nor_written_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"counter": 41, "key": "do not read"}')
    path = tmp_path / "activity" / "activity.json"
    path.parent.mkdir()
    path.symlink_to(secret)

    with pytest.raises(UnsafeActivityFileError, match="symbolic link"):
        read_activity_file(path)
    clock = FakeClock()
    tracker = IdleTracker(path, monotonic=clock)
    with caplog.at_level(logging.WARNING, logger="javia_agent.activity"):
        for _ in range(3):
            assert tracker.idle_seconds() is None
            clock.now += 15
    assert [r.getMessage() for r in caplog.records].count(
        f"activity file {path} is a symbolic link: refused (expected a regular file); "
        "counted as no activity record"
    ) == 1  # one line per distinct problem, not one per poll

    record_activity(path)
    assert secret.read_text() == '{"counter": 41, "key": "do not read"}'
    assert not path.is_symlink()
    assert json.loads(path.read_text())["counter"] == 1  # 41 was not read through the link
    assert tracker.idle_seconds() == 0.0  # a real record is activity again


def test_only_a_regular_file_with_one_link_is_read_and_at_most_4096_bytes(tmp_path: Path) -> None:
    path = tmp_path / "activity.json"
    path.write_bytes(b"x" * 100_000)
    assert read_activity_file(path) == b"x" * MAX_ACTIVITY_BYTES == b"x" * 4096
    os.link(path, tmp_path / "other-name")
    with pytest.raises(UnsafeActivityFileError, match="2 hard links"):
        read_activity_file(path)
    (tmp_path / "other-name").unlink()
    path.unlink()
    path.mkdir()
    with pytest.raises(UnsafeActivityFileError, match="is a directory"):
        read_activity_file(path)
    assert read_activity_file(tmp_path / "missing.json") is None


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="changes owners and runs the application as another user: needs root and "
    "an interpreter that user may run",
)
def test_the_application_group_records_activity_and_nobody_else_can() -> None:
    """As root: the directory register prepares is writable by the app group only.

    The "application" is another user's process (nobody) running the same
    ``record_activity`` with the system's interpreter, with and without the
    directory's group among its groups.
    """
    import grp
    import pwd
    import shutil
    import tempfile

    import javia_agent

    nobody = pwd.getpwnam("nobody")
    group = next(g for g in grp.getgrall() if g.gr_gid not in (0, nobody.pw_gid))
    # Outside pytest's 0700 temporary root, so another user can reach it.
    root = Path(tempfile.mkdtemp(prefix="javia-activity-"))
    try:
        root.chmod(0o755)
        directory = root / "state" / "activity"
        prepare_activity_dir(directory, group.gr_gid)
        info = directory.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (
            ACTIVITY_DIR_MODE, 0, group.gr_gid,
        )  # fmt: skip
        assert ACTIVITY_DIR_MODE == 0o2770
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(javia_agent.__file__).parents[1]),
            ACTIVITY_FILE_ENV: str(directory / "activity.json"),
        }
        record = "from javia_agent.activity import record_activity; record_activity()"

        def as_nobody(*groups: int) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(SYSTEM_PYTHON), "-c", record], env=env, capture_output=True, text=True,
                cwd=root, timeout=30, user=nobody.pw_uid, group=nobody.pw_gid,
                extra_groups=list(groups),
            )  # fmt: skip

        outsider = as_nobody()
        assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
        member = as_nobody(group.gr_gid)
        assert member.returncode == 0, member.stderr
        written = (directory / "activity.json").stat()
        assert written.st_uid == nobody.pw_uid and written.st_gid == group.gr_gid  # setgid dir
        assert IdleTracker(directory / "activity.json").idle_seconds() is not None  # readable
    finally:
        shutil.rmtree(root)
