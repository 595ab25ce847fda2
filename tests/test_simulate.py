"""The fleet simulator against a real server process over loopback (issue 7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from typer.testing import CliRunner

from javia_cli.main import app
from javia_devtools.demo import javia_command
from javia_devtools.simulate import (
    UPDATE_VERSION,
    SimulationConfig,
    SimulationError,
    _build_package,
    process_cpu_seconds,
    process_rss_bytes,
    run_simulation,
)
from javia_devtools.simulated_fleet import (
    FleetHttp,
    ReleaseBehaviour,
    RequestFailed,
    SimulatedDevice,
    SimulatedFleet,
)


def test_twenty_devices_install_an_instant_update_without_errors() -> None:
    report = run_simulation(
        SimulationConfig(
            devices=20, heartbeat_seconds=1.0, connections=8, timeout_seconds=20, seed=1
        )
    )

    assert report.errors == {}
    assert report.completed == 20
    assert report.server_completed == 20, "the server's own count must agree"
    assert report.succeeded
    assert report.seconds_to_all_completed is not None
    assert report.seconds_to_all_completed < 20
    # Every device fetched the package once and reported three steps.
    assert report.requests["download"] == 20
    assert report.requests["manifest"] == 20
    assert report.requests["status"] == 60
    assert report.heartbeat_latency_ms["p50"] > 0
    if os.path.exists("/proc/self/stat"):
        assert report.server_cpu_seconds is not None and report.server_cpu_seconds > 0
        assert report.server_rss_bytes is not None and report.server_rss_bytes > 10 * 2**20


def test_simulate_command_prints_a_json_report(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--devices",
            "3",
            "--heartbeat-seconds",
            "1",
            "--timeout",
            "20",
            "--json",
            "--work-dir",
            str(tmp_path / "work"),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["succeeded"] is True
    assert report["completed"] == 3
    assert report["error_count"] == 0
    # --work-dir keeps the server's log for a person to read.
    assert (tmp_path / "work" / "fleet" / "server.log").stat().st_size > 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": 0}, "devices is 0"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds is 0"),
        ({"connections": 0}, "at least 1"),
        ({"payload_bytes": -1}, "payload_bytes is -1"),
        ({"devices": 10**20}, "expected 1 to 200,000"),
        ({"heartbeat_seconds": float("nan")}, "heartbeat_seconds is nan"),
        ({"heartbeat_seconds": float("inf")}, "heartbeat_seconds is inf"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds is nan"),
        ({"payload_bytes": 10**14}, "expected 0 to 1,073,741,824 bytes"),
        ({"fail_rate": 1.5}, "fail_rate is 1.5"),
        ({"fail_rate": float("nan")}, "fail_rate is nan"),
        ({"crash_after_seconds": 0}, "crash_after_seconds is 0"),
    ],
)
def test_nonsense_settings_are_refused_with_what_was_wrong(changes: dict, message: str) -> None:
    settings = {"devices": 1, **changes}

    with pytest.raises(SimulationError, match=message):
        SimulationConfig(**settings)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_proc_readings_of_this_process() -> None:
    spent_before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU
    spent_after = process_cpu_seconds(os.getpid())

    assert spent_before is not None and spent_after is not None
    assert spent_after > spent_before
    assert (process_rss_bytes(os.getpid()) or 0) > 1024 * 1024
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process


# --------------------------------------------------------------------------- one device, stub server
# A stub device API on 127.0.0.1 shows what the simulator counts when the
# server misbehaves, which a healthy real server never does.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _with_device(
    routes: web.RouteTableDef | None,
    body: Callable[[SimulatedFleet, SimulatedDevice], Awaitable[None]],
    keyring: dict[str, Any] | None = None,
    behaviour: ReleaseBehaviour | None = None,
) -> SimulatedFleet:
    """Run ``body`` with one simulated device against ``routes`` (None: nothing listens)."""
    runner = None
    if routes is None:
        base_url = f"http://127.0.0.1:{_free_port()}"
    else:
        application = web.Application()
        application.add_routes(routes)
        runner = web.AppRunner(application)
        await runner.setup()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, listener)
        await site.start()
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as session:
            fleet = SimulatedFleet(
                FleetHttp(base_url, session, asyncio.Semaphore(2)),
                [SimulatedDevice(uuid="device-1", headers={"Authorization": "Bearer token"})],
                keyring or {},
                random.Random(1),
                behaviour,
            )
            await body(fleet, fleet.devices[0])
    finally:
        if runner is not None:
            await runner.cleanup()
    return fleet


def _offer(manifest: str, signature: str, payload: str) -> web.Response:
    """A heartbeat answer offering update 7 with its files under ``/files/``."""
    directive = {
        "update_id": 7,
        "version": UPDATE_VERSION,
        "manifest_url": f"/files/{manifest}",
        "signature_url": f"/files/{signature}",
        "download_url": f"/files/{payload}",
    }
    return web.json_response({"update": directive, "heartbeat_interval_seconds": 5})


async def _heartbeat_fails(fleet: SimulatedFleet, device: SimulatedDevice) -> None:
    with pytest.raises(RequestFailed):
        await fleet._heartbeat(device, 1.0)


def test_a_server_error_is_counted_by_request_kind_and_status() -> None:
    routes = web.RouteTableDef()

    @routes.post("/api/v1/devices/{uuid}/heartbeat")
    async def heartbeat(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database is locked")

    fleet = asyncio.run(_with_device(routes, _heartbeat_fails))

    assert fleet.tally.requests == {"heartbeat": 1}
    assert fleet.tally.errors == {"heartbeat: HTTP 500": 1}
    assert not fleet.devices[0].seen


def test_a_refused_connection_is_counted_by_request_kind_and_error_class() -> None:
    fleet = asyncio.run(_with_device(None, _heartbeat_fails))

    assert fleet.tally.errors == {"heartbeat: ClientConnectorError": 1}


@pytest.mark.parametrize(
    ("extra", "completes"), [(b"", True), (b"x", False)], ids=["exact", "one-byte-too-long"]
)
def test_a_payload_must_match_the_manifest_before_the_device_reports_completed(
    tmp_path: Path, extra: bytes, completes: bool
) -> None:
    package, keyring = _build_package(tmp_path, 4096)
    reported: list[str] = []
    routes = web.RouteTableDef()

    @routes.post("/api/v1/devices/{uuid}/heartbeat")
    async def heartbeat(request: web.Request) -> web.Response:
        return _offer("manifest", "signature", "payload")

    @routes.post("/api/v1/devices/{uuid}/updates/7/status")
    async def status(request: web.Request) -> web.Response:
        reported.append((await request.json())["status"])
        return web.json_response({})

    @routes.get("/files/{name}")
    async def files(request: web.Request) -> web.Response:
        paths = {
            "manifest": package.manifest_path,
            "signature": package.signature_path,
            "payload": package.payload_path,
        }
        data = Path(paths[request.match_info["name"]]).read_bytes()
        return web.Response(body=data + extra if request.match_info["name"] == "payload" else data)

    async def heartbeat_once(fleet: SimulatedFleet, device: SimulatedDevice) -> None:
        with contextlib.suppress(RequestFailed):
            assert await fleet._heartbeat(device, 1.0) == 5.0

    fleet = asyncio.run(_with_device(routes, heartbeat_once, keyring))

    assert fleet.tally.requests["download"] == 1
    if completes:
        assert fleet.tally.errors == {}
        assert reported == ["downloading", "installing", "completed"]
        assert fleet.devices[0].version == UPDATE_VERSION
    else:
        assert fleet.tally.errors == {"verify: payload does not match the manifest": 1}
        assert reported == ["downloading"]
        assert fleet.devices[0].version != UPDATE_VERSION


def test_a_work_dir_must_be_a_new_or_empty_directory(tmp_path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SimulationError, match="is not a directory"):
        SimulationConfig(devices=1, work_dir=a_file)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(SimulationError, match="is not empty"):
        SimulationConfig(devices=1, work_dir=tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    SimulationConfig(devices=1, work_dir=tmp_path / "new")  # accepted, created when it runs


def test_sigterm_stops_the_server_and_removes_the_scratch_directory(tmp_path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [*javia_command(), "simulate", "--devices", "50", "--heartbeat-seconds", "30"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("javia-simulate-*/fleet/server.log")):
        assert time.monotonic() < deadline, "the simulation did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # the server is up or starting
    server_pids = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)

    assert process.returncode != 0
    assert "Traceback" not in errors
    assert list(tmp_path.glob("javia-simulate-*")) == []  # scratch (and its signing key) removed
    for pid in server_pids:
        assert not _running(pid), f"server {pid} was left running"


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    children: list[int] = []
    for task in tasks.iterdir():
        text = (task / "children").read_text().split()
        children += [int(child) for child in text]
    return children


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# -- a bad release: failures and crashes after a "successful" install (issue 13) ----------


def test_fail_all_fails_every_install_and_a_rate_fails_about_that_share() -> None:
    rng = random.Random(5)
    rate = ReleaseBehaviour(fail_rate=0.005)

    failures = sum(rate.install_fails(rng) for _ in range(40_000))

    assert all(ReleaseBehaviour(fail_all=True).install_fails(rng) for _ in range(100))
    assert not any(ReleaseBehaviour().install_fails(rng) for _ in range(1_000))
    assert 140 <= failures <= 260  # 200 expected


def test_the_app_of_a_crashing_release_reports_restarts_after_crash_after_seconds() -> None:
    crashing = ReleaseBehaviour(crash_after_seconds=600)
    healthy = {"restarts": 0, "last_exit_status": None, "running": True}

    assert crashing.application(None, 10_000.0) == healthy  # the base version never crashes
    assert crashing.application(1_000.0, 1_599.0) == healthy
    assert crashing.application(1_000.0, 1_600.0)["restarts"] == 1
    assert crashing.application(1_000.0, 2_900.0) == {
        "restarts": 3,
        "last_exit_status": -11,
        "running": True,
    }
    assert ReleaseBehaviour().application(0.0, 1e9) == healthy


def test_a_failing_release_reports_failed_and_heartbeats_carry_the_application(
    tmp_path: Path,
) -> None:
    package, keyring = _build_package(tmp_path, 1024)
    reported: list[dict[str, Any]] = []
    beats: list[dict[str, Any]] = []
    routes = web.RouteTableDef()

    @routes.post("/api/v1/devices/{uuid}/heartbeat")
    async def heartbeat(request: web.Request) -> web.Response:
        beats.append(await request.json())
        return _offer("manifest_path", "signature_path", "payload_path")

    @routes.post("/api/v1/devices/{uuid}/updates/7/status")
    async def status(request: web.Request) -> web.Response:
        reported.append(await request.json())
        return web.json_response({})

    @routes.get("/files/{name}")
    async def files(request: web.Request) -> web.Response:
        return web.Response(body=Path(getattr(package, request.match_info["name"])).read_bytes())

    async def heartbeat_once(fleet: SimulatedFleet, device: SimulatedDevice) -> None:
        await fleet._heartbeat(device, 1.0)

    fleet = asyncio.run(
        _with_device(routes, heartbeat_once, keyring, ReleaseBehaviour(fail_all=True))
    )

    assert [report["status"] for report in reported] == ["downloading", "installing", "failed"]
    assert reported[-1]["error_message"] == "simulated failure"
    assert fleet.devices[0].failed_at is not None
    assert fleet.devices[0].version != UPDATE_VERSION
    assert beats[0]["application"] == {"restarts": 0, "last_exit_status": None, "running": True}


def test_a_release_failing_everywhere_halts_inside_the_first_phase_and_the_run_reports_it() -> None:
    report = run_simulation(
        SimulationConfig(
            devices=40,
            heartbeat_seconds=1.0,
            connections=8,
            timeout_seconds=30,
            seed=2,
            fail_all=True,
            rollout={"phases": "20,100", "phase_soak_seconds": "3600", "halt_min_devices": "2"},
            after_halt_seconds=1.5,
        )
    )

    assert report.rollout_state == "halted"
    assert report.halt_reason is not None and "failed" in report.halt_reason
    assert report.first_phase_devices is not None and report.first_phase_devices < 40
    # Only devices of the first phase ever started, and the server agrees.
    assert 2 <= report.started == report.server_started <= report.first_phase_devices
    assert report.seconds_first_failure_to_halt is not None
    assert 0 <= report.seconds_last_failure_to_halt <= report.seconds_first_failure_to_halt
    assert report.completed == 0 and report.errors == {}


def test_after_halt_seconds_must_be_a_number_of_seconds() -> None:
    with pytest.raises(SimulationError, match="after_halt_seconds is -1"):
        SimulationConfig(devices=1, after_halt_seconds=-1)
    assert SimulationConfig(devices=1, heartbeat_seconds=10).seconds_after_halt == 13.0


def test_a_busy_server_defers_new_installs_and_every_device_still_completes() -> None:
    """Install admission (docs/architecture.md): with room for one request at a time in
    progress, the server defers most starts; the deferred devices come back and finish."""
    report = run_simulation(
        SimulationConfig(
            devices=60,
            heartbeat_seconds=2.0,
            connections=32,
            timeout_seconds=90,
            seed=3,
            server_settings={"JAVIA_INSTALL_ADMISSION_REQUESTS": "1"},
        )
    )
    assert report.succeeded, report.errors
    assert report.installs_deferred is not None and report.installs_deferred > 0
    assert report.requests["download"] == 60  # a deferral never cut an install midway


def test_server_settings_must_be_javia_variables() -> None:
    with pytest.raises(SimulationError, match="JAVIA_"):
        SimulationConfig(devices=1, server_settings={"PATH": "/tmp"})
