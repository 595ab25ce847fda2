"""The application's restarts and last exit in every heartbeat (issue 13, automatic halt)."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import httpx
from hypothesis import given
from hypothesis import strategies as st

from javia_agent.activity import IdleTracker
from javia_agent.agent import Agent
from javia_agent.app_health import (
    ApplicationMonitor,
    ApplicationRecord,
    ServiceSample,
    observe,
    parse_systemctl_show,
)
from javia_agent.client import DeviceClient
from javia_agent.config import AgentConfig
from javia_agent.outbox import Outbox

from .helpers import Device, PackageFactory, Signer, make_installer
from .test_agent_loop import FakeApi

# -- systemd mode: `systemctl show` and the baseline, as pure functions ----------------


def test_systemctl_show_gives_the_restart_counter_and_the_signal_that_ended_the_app() -> None:
    sample = parse_systemctl_show(
        "NRestarts=3\nExecMainCode=2\nExecMainStatus=9\nActiveState=activating\n"
    )

    assert sample == ServiceSample(running=False, restart_counter=3, exit_status=-9)


def test_systemctl_show_gives_an_exit_code_and_nothing_while_the_first_process_runs() -> None:
    exited = parse_systemctl_show(
        "ActiveState=failed\nExecMainStatus=3\nExecMainCode=1\nNRestarts=0"
    )
    running = parse_systemctl_show(
        "NRestarts=0\nExecMainCode=0\nExecMainStatus=0\nActiveState=active"
    )

    assert exited == ServiceSample(running=False, restart_counter=0, exit_status=3)
    assert running == ServiceSample(running=True, restart_counter=0, exit_status=None)


def test_systemctl_show_without_nrestarts_or_with_junk_leaves_them_unknown() -> None:
    sample = parse_systemctl_show("ActiveState=active\nExecMainCode=x\nwhatever\nNRestarts=-4")

    assert sample == ServiceSample(running=True, restart_counter=None, exit_status=None)


def _systemd(
    counter: int, *, running: bool = True, exit_status: int | None = None
) -> ServiceSample:
    return ServiceSample(running=running, restart_counter=counter, exit_status=exit_status)


def test_restarts_count_from_the_counter_seen_when_the_release_became_current() -> None:
    first = observe(None, release="v1.0.0", boot_id="b1", sample=_systemd(4))
    later = observe(first, release="v1.0.0", boot_id="b1", sample=_systemd(6, exit_status=-11))
    same = observe(later, release="v1.0.0", boot_id="b1", sample=_systemd(6))

    assert first.restarts == 0  # restarts before the agent first looked are not this release's
    assert (later.restarts, later.last_exit_status) == (2, -11)
    assert (same.restarts, same.last_exit_status) == (2, -11)  # an exit is remembered


def test_a_new_release_starts_again_from_zero() -> None:
    old = ApplicationRecord(release="v1.0.0", boot_id="b1", restarts=5, last_exit_status=1)

    new = observe(old, release="v1.1.0", boot_id="b1", sample=_systemd(0))

    assert (new.release, new.restarts, new.last_exit_status) == ("v1.1.0", 0, None)


def test_a_counter_that_started_again_adds_its_new_value_and_a_reboot_is_no_restart() -> None:
    record = ApplicationRecord(release="v1.0.0", boot_id="b1", restarts=2, restart_counter=7)

    rebooted = observe(record, release="v1.0.0", boot_id="b2", sample=_systemd(1))
    manual = observe(rebooted, release="v1.0.0", boot_id="b2", sample=_systemd(0))

    assert rebooted.restarts == 3  # one automatic restart since the boot
    assert manual.restarts == 3 and manual.restart_counter == 0


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=20))
def test_restarts_of_one_release_never_go_down(counters: list[int]) -> None:
    record = observe(None, release="v1.0.0", boot_id="b", sample=_systemd(counters[0]))
    for counter in counters[1:]:
        following = observe(record, release="v1.0.0", boot_id="b", sample=_systemd(counter))
        assert following.restarts >= record.restarts
        record = following


def test_command_mode_another_process_is_a_restart_unless_the_device_rebooted() -> None:
    running = ServiceSample(running=True, instance="100:5")
    record = observe(None, release="v1.0.0", boot_id="b1", sample=running)
    died = observe(
        record, release="v1.0.0", boot_id="b1", sample=ServiceSample(False, None, None, -9)
    )
    again = observe(
        died, release="v1.0.0", boot_id="b1", sample=ServiceSample(True, instance="200:9")
    )
    after_boot = observe(again, release="v1.0.0", boot_id="b2", sample=running)

    assert (died.restarts, died.last_exit_status) == (0, -9)
    assert (again.restarts, again.last_exit_status) == (1, -9)
    assert after_boot.restarts == 1


# -- command mode: a real application process, heartbeats captured ----------------------


def _agent(device: Device, signer: Signer, api: FakeApi) -> Agent:
    """A fresh agent process on ``device`` (a new monitor reading application.json)."""
    settings = AgentConfig(
        server_url="https://updates.example.org",
        device_uuid=uuid.UUID(int=7),
        install_root=device.paths.install_root,
        state_dir=device.paths.state_dir,
        service_mode="command",
        start_command=["python3", "app.py"],
        heartbeat_jitter=0.0,
    )
    installer = make_installer(device, signer)
    monitor = ApplicationMonitor(
        device.paths.application_file,
        sample=device.service.sample,
        release=installer.current_release,
        boot_id="boot-1",
    )
    client = DeviceClient(
        settings.server_url,
        device_uuid=uuid.UUID(int=7),
        token="t",
        transport=httpx.MockTransport(api),
    )
    return Agent(
        settings,
        client=client,
        installer=installer,
        outbox=Outbox(settings.paths.outbox_dir),
        idle=IdleTracker(device.paths.activity_file),
        rng=random.Random(1),
        metadata=dict,
        application=monitor.health,
    )


def _wait_stopped(device: Device) -> None:
    deadline = time.monotonic() + 10
    while device.service.is_active():
        assert time.monotonic() < deadline, "the application did not die"
        time.sleep(0.02)


def test_a_killed_application_is_reported_and_its_restart_counted_across_agent_restarts(
    device: Device, signer: Signer, make_package: PackageFactory
) -> None:
    installer = make_installer(device, signer)
    assert installer.install_from_directory(make_package("v1.0.0").directory).result == "completed"
    device.wait_for_app("v1.0.0")
    api = FakeApi()
    agent = _agent(device, signer, api)

    agent.run_once()
    agent.run_once()
    clean = {"restarts": 0, "last_exit_status": None, "running": True}
    assert [beat["application"] for beat in api.heartbeats] == [clean, clean]

    pid = device.service.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_stopped(device)
    agent.run_once()
    # The agent does not restart an application that exits while it runs: it reports it.
    assert api.heartbeats[-1]["application"] == {
        "restarts": 0,
        "last_exit_status": -9,
        "running": False,
    }

    restarted = _agent(device, signer, api)  # the agent restarts: it starts the application again
    restarted.start()
    device.wait_for_app("v1.0.0")
    restarted.run_once()
    after_kill = {"restarts": 1, "last_exit_status": -9, "running": True}
    assert api.heartbeats[-1]["application"] == after_kill

    _agent(device, signer, api).run_once()  # another agent restart: no double count
    assert api.heartbeats[-1]["application"] == after_kill

    update = installer.install_from_directory(make_package("v1.1.0").directory)
    assert update.result == "completed"
    device.wait_for_app("v1.1.0")
    _agent(device, signer, api).run_once()
    assert api.heartbeats[-1]["current_version"] == "v1.1.0"
    assert api.heartbeats[-1]["application"] == clean


def test_without_a_release_the_heartbeat_carries_no_application(
    device: Device, signer: Signer
) -> None:
    api = FakeApi()

    _agent(device, signer, api).run_once()

    assert "application" not in api.heartbeats[0]
    assert not Path(device.paths.application_file).exists()
