"""Command mode: an agent killed between starting the application and recording its pid.

Found by killing the agent at random moments (issue 11): the restarted agent
found no pid file and started a *second* copy, which then outlived every
later update. Now the child waits at a gate until its pid is on disk, so
whatever the moment of the SIGKILL the application runs exactly once. Real
processes throughout: a real "agent" process killed with SIGKILL, the real
application, and (last test) a real ``javia agent run`` against a real server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from javia_agent.services import CommandService
from javia_agent.state import UpdateState
from javia_devtools.demo import FleetDevice

from .fleet import (
    CrashFleet,
    app_alive,
    assert_converged,
    pause_env,
    provisioned_v1,
    saved_state,
    starts_of,
    wait_for,
)

# The application: records its pid in $STARTS, then runs.
APP = [
    sys.executable,
    "-c",
    "import os, time\n"
    "with open(os.environ['STARTS'], 'a') as log: log.write(f'{os.getpid()}\\n')\n"
    "time.sleep(120)\n",
]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _started(starts: Path) -> list[int]:
    try:
        return [int(line) for line in starts.read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Path]:
    release = tmp_path / "app" / "releases" / "v1.0.0"
    release.mkdir(parents=True)
    (tmp_path / "app" / "current").symlink_to("releases/v1.0.0")
    (tmp_path / "var").mkdir()
    try:
        yield tmp_path
    finally:
        for pid in _started(tmp_path / "starts"):  # the copies this test's processes started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _service(root: Path) -> CommandService:
    return CommandService(
        APP,
        current_link=root / "app" / "current",
        pid_file=root / "var" / "app.pid",
        log_file=root / "var" / "app.log",
        activity_file=root / "var" / "activity.json",
        app_env={"STARTS": str(root / "starts")},
        poll_seconds=0.02,
    )


# The "agent": starts the application, but stops still the moment it is about to
# record its pid (its pid-file write is held), so the test can SIGKILL it there.
AGENT = """
import os, sys, time
from pathlib import Path
from javia_agent import services

root = Path(sys.argv[1])
held = services.atomic_write

def write(path, data, **options):
    if Path(path).name == "app.pid":
        (root / "paused").write_text(str(os.getpid()))
        time.sleep(600)
    return held(path, data, **options)

services.atomic_write = write
services.CommandService(
    {argv!r},
    current_link=root / "app" / "current",
    pid_file=root / "var" / "app.pid",
    log_file=root / "var" / "app.log",
    activity_file=root / "var" / "activity.json",
    app_env={{"STARTS": str(root / "starts")}},
).start()
"""


def test_an_agent_killed_before_it_records_the_pid_leaves_the_app_running_once(
    layout: Path,
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT.format(argv=APP), str(layout)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        wait_for((layout / "paused").exists, 30, "the agent to be about to record the pid")
        time.sleep(0.3)  # room for an application that was let run to show itself
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)

    restarted = _service(layout)  # the agent's next start
    restarted.start()
    running = wait_for(
        lambda: [pid for pid in _started(layout / "starts") if _alive(pid)], 10, "the app"
    )
    time.sleep(0.5)  # a second copy would have written its pid by now
    running = [pid for pid in _started(layout / "starts") if _alive(pid)]
    assert running == [restarted.pid()], f"copies running: {running}"
    restarted.stop()
    assert not any(_alive(pid) for pid in _started(layout / "starts"))


@pytest.mark.parametrize("point", ["service.spawned", "service.recorded"])
def test_a_sigkill_at_either_side_of_recording_the_pid_runs_the_app_once(
    layout: Path, point: str
) -> None:
    """The service's own pause points: before the pid file, and after it but before "go"."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from javia_agent.installer import pause_hook_from_environment\n"
        "from javia_agent.services import CommandService\n"
        "root = Path(sys.argv[1])\n"
        f"CommandService({APP!r}, current_link=root / 'app' / 'current',\n"
        "    pid_file=root / 'var' / 'app.pid', log_file=root / 'var' / 'app.log',\n"
        "    activity_file=root / 'var' / 'activity.json',\n"
        "    app_env={'STARTS': str(root / 'starts')},\n"
        "    checkpoint=pause_hook_from_environment(root / 'var')).start()\n"
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", script, str(layout)],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "JAVIA_AGENT_PAUSE_AT": point,
        },
    )
    try:
        wait_for((layout / "var" / f"paused-at-{point}").exists, 30, f"the agent at {point}")
        time.sleep(0.3)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
    assert _started(layout / "starts") == []  # it never ran: the gate held it

    restarted = _service(layout)
    wait_for(lambda: not restarted.is_active(), 10, "the gated child to exit")
    restarted.start()
    wait_for(lambda: _started(layout / "starts"), 10, "the app")
    time.sleep(0.5)
    running = [pid for pid in _started(layout / "starts") if _alive(pid)]
    assert running == [restarted.pid()], f"copies running: {running}"
    restarted.stop()


# -- the real agent against a real server ------------------------------------------

_versions = iter(range(1, 1000))


@pytest.fixture
def device(fleet: CrashFleet, request: pytest.FixtureRequest) -> Iterator[FleetDevice]:
    with provisioned_v1(fleet, request.node.name) as device:
        yield device


@pytest.mark.e2e
def test_a_real_agent_killed_before_recording_the_new_apps_pid_runs_it_once(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    # v9.x: above the versions test_agent_loop_breaker publishes on the same server,
    # which refuses a version lower than one already published.
    new = fleet.package(f"v9.{next(_versions)}.0")
    version = new.manifest.version
    update_id = fleet.publish_to(device, new)
    marker = device.state_dir / "paused-at-service.spawned"

    fleet.start_agent_with(device, pause_env("service.spawned"))
    # First the agent starts v1.0.0 (it was not running): let that one go.
    wait_for(marker.exists, 60, "the agent to start v1.0.0")
    marker.unlink()
    # Then the switch starts the new release: kill the agent right there.
    wait_for(
        lambda: marker.exists() and saved_state(device).state == UpdateState.SWITCHING,
        60,
        f"the agent to start {version}",
    )
    time.sleep(0.3)
    fleet.kill_agent(device)
    marker.unlink()
    assert not app_alive(device) or device.app_status()["version"] == "v1.0.0"

    fleet.start_agent_with(device)

    assert_converged(
        fleet, device, running=new, update_id=update_id, final="completed", new_version=version
    )
    time.sleep(1.0)  # a second copy would have logged its start by now
    assert starts_of(device, version) == 1, (device.state_dir / "app.log").read_text()
