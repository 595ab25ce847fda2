"""Why a device failed, and transient faults, with real processes: server, agent, application, pip.

- a package index that is down: the agent reports ``retrying`` with the
  reason and, once the index is back, installs the same update (nothing is
  republished);
- a release that crashes right after it started: ``rolled_back`` with class
  ``crash_after_start``, its exit code and its last output lines, a secret it
  printed redacted;
- a full disk is retried until the deadline, then ``failed`` with the last
  reason, the version not marked failed.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from javia_devtools.demo import FleetDevice

from .fleet import CrashFleet, app_alive, provisioned_v1, saved_state, wait_for
from .test_agent_environments import build_wheel

pytestmark = pytest.mark.e2e

_FAST_RETRIES = {"JAVIA_AGENT_RETRY_BASE_SECONDS": "0.5", "JAVIA_AGENT_RETRY_MAX_SECONDS": "1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashFleet]:
    """This module's own server (a longer start-up limit: a busy CI machine imports slowly)."""
    fleet = CrashFleet(tmp_path_factory.mktemp("fleet"), heartbeat_seconds=0.5, health_seconds=0.5)
    fleet.generate_key()
    fleet.start_server(timeout=90)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def device(fleet: CrashFleet, request: pytest.FixtureRequest) -> Iterator[FleetDevice]:
    with provisioned_v1(fleet, request.node.name) as device:
        yield device


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(fleet: CrashFleet, device: FleetDevice) -> None:
    fleet.start_agent_with(device)
    wait_for(
        lambda: (s := device.app_status()) and s["version"] == "v1.0.0" and app_alive(device),
        30,
        "the agent to start v1.0.0",
    )


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


def test_a_package_index_that_is_down_is_retried_until_it_is_back(
    fleet: CrashFleet, device: FleetDevice, tmp_path: Path
) -> None:
    index_root = tmp_path / "index"
    project = index_root / "simple" / "javia-probe"  # PEP 503: a listing of the files
    project.mkdir(parents=True)
    build_wheel(project, "javia_probe", "1.0")
    port = _free_port()  # nothing listens here yet: the index is down
    pip_args = ["--index-url", f"http://127.0.0.1:{port}/simple", "--retries", "1"]
    fleet.agent_overrides[device.name] = {
        **_FAST_RETRIES,
        "JAVIA_AGENT_PIP_ARGS": json.dumps([*pip_args, "--timeout", "5"]),
    }
    _start(fleet, device)
    package = fleet.package("v5.0.0", extra_files={"requirements.txt": b"javia_probe==1.0\n"})
    update_id = fleet.publish_to(device, package)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "retrying" and r,
        90,
        "retrying on the server",
    )
    assert "the package index is unreachable" in (row.error_message or "")
    assert device.app_status()["version"] == "v1.0.0" and app_alive(device)  # untouched

    handler = functools.partial(_Quiet, directory=str(index_root))
    index = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=index.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: (r := fleet.row(device, update_id)) and r.status == "completed",
            120,
            "the same update to complete once the index is back",
        )
    finally:
        index.shutdown()
        index.server_close()
    wait_for(
        lambda: (s := device.app_status()) and s["version"] == "v5.0.0" and app_alive(device),
        20,
        "v5.0.0 to run",
    )
    assert saved_state(device).failed_versions == []


def test_a_crash_after_start_reports_its_exit_code_and_last_output_with_secrets_redacted(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    _start(fleet, device)
    secret = "hunter2-d0-not-leak-7f3a"
    package = fleet.package(
        "v6.0.0",
        extra_files={
            "CRASH_AFTER": b"0.1",
            "SAY": f"connecting as assistant\nDB_PASSWORD={secret}\n".encode(),
        },
    )
    update_id = fleet.publish_to(device, package)

    row = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "rolled_back" and r,
        60,
        "rolled_back on the server",
    )
    failure = row.failure
    assert failure is not None
    assert failure.failure_class == "crash_after_start"
    assert failure.step == "health_check"
    assert failure.exit_code == 1 and failure.signal is None
    assert failure.output_source == "app_log"
    tail = failure.output_tail or ""
    assert "assistant v6.0.0: crashing on purpose" in tail
    assert "DB_PASSWORD=[REDACTED]" in tail
    assert secret not in row.model_dump_json()
    assert "exit code 1" in failure.reason

    with fleet.client() as admin:
        grouped = admin.update_failures(update_id)
    assert [(g.failure_class, g.count) for g in grouped.groups] == [("crash_after_start", 1)]


def test_a_full_disk_is_retried_until_the_deadline_then_fails_unmarked(
    fleet: CrashFleet, device: FleetDevice
) -> None:
    fleet.agent_overrides[device.name] = {
        **_FAST_RETRIES,
        "JAVIA_AGENT_DISK_RESERVE_BYTES": str(10**15),
        "JAVIA_AGENT_RETRY_DEADLINE_SECONDS": "3",
    }
    _start(fleet, device)
    update_id = fleet.publish_to(device, fleet.package("v7.0.0"))

    retrying = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "retrying" and r,
        60,
        "retrying on the server",
    )
    assert "not enough disk space for v7.0.0" in (retrying.error_message or "")
    failed = wait_for(
        lambda: (r := fleet.row(device, update_id)) and r.status == "failed" and r,
        60,
        "failed at the deadline",
    )
    assert "gave up retrying at the deadline" in (failed.error_message or "")
    assert "not enough disk space for v7.0.0" in (failed.error_message or "")
    assert failed.failure is not None and failed.failure.failure_class == "disk_space"
    assert saved_state(device).failed_versions == []  # not the package's fault
    assert device.app_status()["version"] == "v1.0.0" and app_alive(device)
