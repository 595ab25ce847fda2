"""Service control: a real application process (command mode) and systemctl argv (systemd mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from javia_agent.errors import ServiceError
from javia_agent.services import CommandService, SystemdService

from .helpers import APP_SOURCE


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """``install_root/current -> releases/v1.0.0`` holding the test app."""
    directory = tmp_path / "app" / "releases" / "v1.0.0"
    directory.mkdir(parents=True)
    (directory / "app.py").write_text(APP_SOURCE)
    (directory / "VERSION").write_text("v1.0.0\n")
    (tmp_path / "app" / "current").symlink_to("releases/v1.0.0")
    return directory


def _service(tmp_path: Path, argv: list[str] | None = None, **options) -> CommandService:
    return CommandService(
        argv or [sys.executable, "app.py"],
        current_link=tmp_path / "app" / "current",
        pid_file=tmp_path / "var" / "app.pid",
        log_file=tmp_path / "var" / "app.log",
        activity_file=tmp_path / "var" / "activity.json",
        app_env={"TEST_APP_STATUS": str(tmp_path / "status.json"), "GREETING": "hello"},
        poll_seconds=0.02,
        **options,
    )


def _wait_status(tmp_path: Path, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((tmp_path / "status.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.02)
    raise AssertionError("the app never wrote its status")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_runs_the_app_in_the_current_release_and_stop_ends_it(
    tmp_path: Path, release: Path
) -> None:
    service = _service(tmp_path)
    service.start()
    try:
        status = _wait_status(tmp_path)
        assert service.is_active() and service.pid() == status["pid"]
        assert status["version"] == "v1.0.0"
        assert status["release_dir"] == str(release.resolve())
        assert status["activity_file"] == str(tmp_path / "var" / "activity.json")
        service.start()  # idempotent: still the same process
        assert service.pid() == status["pid"]
    finally:
        service.stop()
    assert not service.is_active() and not _alive(status["pid"])
    assert not (tmp_path / "var" / "app.pid").exists()


def test_the_app_survives_a_restart_of_the_agent(tmp_path: Path, release: Path) -> None:
    # The "agent" is a separate process that starts the app and exits.
    script = f"""
import sys
sys.path[:0] = {sys.path!r}
from pathlib import Path
from javia_agent.services import CommandService
CommandService(
    [sys.executable, "app.py"],
    current_link=Path({str(tmp_path / "app" / "current")!r}),
    pid_file=Path({str(tmp_path / "var" / "app.pid")!r}),
    log_file=Path({str(tmp_path / "var" / "app.log")!r}),
    activity_file=Path({str(tmp_path / "var" / "activity.json")!r}),
    app_env={{"TEST_APP_STATUS": {str(tmp_path / "status.json")!r}}},
).start()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    status = _wait_status(tmp_path)
    restarted = _service(tmp_path)  # the next agent process finds it through the pid file
    try:
        assert restarted.is_active() and restarted.pid() == status["pid"]
    finally:
        restarted.stop()
    assert not _alive(status["pid"])


def test_an_app_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path, release: Path) -> None:
    stubborn = [
        sys.executable,
        "-c",
        (
            "import signal, time, pathlib, os; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(os.environ['TEST_APP_STATUS']).write_text('{\"pid\": %d}' % os.getpid()); "
            "time.sleep(60)"
        ),
    ]
    service = _service(tmp_path, stubborn, stop_timeout_seconds=0.3)
    service.start()
    pid = _wait_status(tmp_path)["pid"]
    started = time.monotonic()
    service.stop()
    assert not _alive(pid)
    assert 0.3 <= time.monotonic() - started < 5


def test_an_app_that_exits_is_not_active(tmp_path: Path, release: Path) -> None:
    service = _service(tmp_path, [sys.executable, "-c", "raise SystemExit(1)"])
    service.start()
    deadline = time.monotonic() + 10
    while service.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not service.is_active()


def test_a_reused_pid_is_not_mistaken_for_the_app(tmp_path: Path, release: Path) -> None:
    (tmp_path / "var").mkdir()
    # The pid file names this very test process, but with another start time.
    (tmp_path / "var" / "app.pid").write_text(json.dumps({"pid": os.getpid(), "start_ticks": 1}))
    service = _service(tmp_path)
    assert not service.is_active()
    service.stop()  # must not signal us
    assert _alive(os.getpid())


def test_start_without_a_release_or_command_is_a_service_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="does not point to an installed release"):
        _service(tmp_path).start()
    with pytest.raises(ServiceError, match="start_command is empty"):
        CommandService(
            [],
            current_link=tmp_path / "current",
            pid_file=tmp_path / "pid",
            log_file=tmp_path / "log",
            activity_file=tmp_path / "activity",
        ).start()


def test_systemd_service_runs_systemctl_and_writes_the_environment_file(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv, **kwargs):
        calls.append(argv)
        code = 3 if argv[1] == "is-active" else 0
        return subprocess.CompletedProcess(argv, code, "", "")

    service = SystemdService(
        "javia-app.service",
        environment=lambda: {
            "JAVIA_RELEASE_DIR": "/opt/javia/app/releases/v1.0.0",
            "QUOTE": 'say "hi"',
        },
        env_file=tmp_path / "app.env",
        runner=runner,
    )
    service.stop()
    service.start()
    assert not service.is_active()
    assert calls == [
        ["systemctl", "stop", "javia-app.service"],
        ["systemctl", "start", "javia-app.service"],
        ["systemctl", "is-active", "--quiet", "javia-app.service"],
    ]
    assert (tmp_path / "app.env").read_text() == (
        'JAVIA_RELEASE_DIR="/opt/javia/app/releases/v1.0.0"\nQUOTE="say \\"hi\\""\n'
    )


def test_systemd_failures_are_service_errors(tmp_path: Path) -> None:
    def runner(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 5, "", "Unit javia-app.service not found.")

    with pytest.raises(ServiceError, match="not found"):
        SystemdService("javia-app.service", runner=runner).start()
