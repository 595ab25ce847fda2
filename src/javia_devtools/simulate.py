"""Fleet simulator: many lightweight devices against one real server, over real HTTP.

``javia simulate --devices N`` starts a real ``javia server`` on 127.0.0.1 in
a scratch directory, registers N devices through the admin API, and runs each
device as an asyncio task in this one process. Every device speaks the real
device API (DESIGN.md section 6) the way the agent does, with an accelerated
heartbeat interval (the server's ``heartbeat_interval_seconds``, which devices
obey, plus or minus 10 % jitter):

1. heartbeat, reporting the version it runs;
2. once every device has been seen, the simulator publishes a signed
   **instant** update (DESIGN.md section 4: every device seen in the last
   300 s gets a row and installs at its next heartbeat);
3. a device whose heartbeat answer carries an install directive reports
   ``downloading``, fetches the manifest and signature and verifies the
   Ed25519 signature against the simulator's key, downloads the payload and
   checks its size and SHA-256 against the manifest, reports ``installing``
   and then ``completed``, and from then on heartbeats with the new version.

No application is installed or run: this measures the server and the wire,
not the Pi. The report says how long until all N devices had reported
``completed`` (measured from the moment the publish request was answered),
how many requests failed and why, the heartbeat latency, and how much CPU
the server process used (read from ``/proc``; None where there is none).

Load stays on loopback: the simulator only ever talks to the server it
started. Every loop is bounded by ``timeout_seconds``.

This module sets up and runs a simulation (configuration, server, signed
package, registration, publish, timing); the devices are
:mod:`javia_devtools.simulated_fleet` and the report
:mod:`javia_devtools.simulation_report` (its names are re-exported here).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from javia_core.errors import JaviaError
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_devtools.simulated_fleet import (
    API_PREFIX,
    BASE_VERSION,
    HTTP_ERRORS,
    FleetHttp,
    ReleaseBehaviour,
    SimulatedDevice,
    SimulatedFleet,
)
from javia_devtools.simulation_report import (
    SimulationReport,
    percentiles,
    process_cpu_seconds,
    process_rss_bytes,
    process_tree_cpu_seconds,
    process_tree_rss_bytes,
)

__all__ = [
    "BASE_VERSION",
    "MAX_DEVICES",
    "MAX_HEARTBEAT_SECONDS",
    "MAX_PAYLOAD_BYTES",
    "UPDATE_VERSION",
    "SimulationConfig",
    "SimulationError",
    "SimulationReport",
    "process_cpu_seconds",
    "process_rss_bytes",
    "run_simulation",
]

#: Most simulated devices in one run (each is a coroutine and a registered device).
MAX_DEVICES = 200_000
#: Largest simulated payload, in bytes (the simulator builds it in memory).
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024
#: Longest heartbeat interval the server accepts (its ``heartbeat_interval_seconds``).
MAX_HEARTBEAT_SECONDS = 86_400

#: The version the simulator publishes.
UPDATE_VERSION = "v1.1.0"

_KEEPALIVE_SECONDS = 2.0  # below uvicorn's 5 s keep-alive timeout
_REQUEST_TIMEOUT_SECONDS = 60.0  # connect, and between two reads of an answer
_JITTER_ALLOWANCE = 0.1  # the devices' heartbeat jitter (simulated_fleet)
#: Statuses of a device that started the update (the exposed devices).
_STARTED_STATUSES = ("downloading", "installing", "completed", "failed", "rolled_back")
#: How often the rollout's state is read while the fleet runs (seconds).
ROLLOUT_POLL_SECONDS = 0.5


class SimulationError(JaviaError):
    """The simulation could not be set up or run (server start, registration, publish)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate.

    Attributes:
        devices: number of simulated devices (at least 1).
        heartbeat_seconds: the server's heartbeat interval, which devices obey
            (seconds; the wire carries whole seconds, so at least 1 s in effect).
        connections: HTTP connections shared by all devices; also the number of
            requests in flight at once.
        payload_bytes: size of the published package's random (incompressible)
            payload file, in bytes.
        timeout_seconds: give up waiting for the fleet after this many seconds
            (from the publish); the report then shows how many completed.
        register_concurrency: admin registrations in flight at once.
        database_url: SQLAlchemy URL for the server's store (None: the local
            SQLite backend in the scratch directory).
        work_dir: scratch directory to use and keep (None: a temporary one,
            removed afterwards).
        seed: seed of the jitter's random generator (None: unseeded).
        fail_rate: fraction (0 to 1) of installs that report ``failed``.
        fail_all: every install reports ``failed`` (a release bad everywhere).
        crash_after_seconds: the application of a completed install crashes
            this many seconds after ``completed`` (and again every as many);
            heartbeats then report ``restarts`` > 0. None: it never crashes.
        rollout: the publish's rollout policy as the API's form fields
            (``phases``, ``phase_soak_seconds``, ``halt_failure_rate``,
            ``halt_min_devices``; docs/rollouts.md), as text; None: the
            server's defaults (one phase of 100 %).
        after_halt_seconds: once the rollout is seen ``halted``, the fleet
            keeps heartbeating this many seconds more (in-flight installs
            finish; a device offered the update after the halt would show),
            then the run ends. None: 1.1 heartbeat intervals + 2 s, so every
            device heartbeats at least once after the halt.
        server_workers: the server's worker processes (``javia server
            --workers``, 1 to 256); its CPU and memory are then the sum over
            the supervisor and its workers.
        server_settings: more settings for the server, as its ``JAVIA_*``
            environment variables (e.g. ``{"JAVIA_INSTALL_ADMISSION_REQUESTS":
            "0"}``); names outside ``JAVIA_`` are refused.
    """

    devices: int
    heartbeat_seconds: float = 5.0
    connections: int = 64
    payload_bytes: int = 64 * 1024
    timeout_seconds: float = 300.0
    register_concurrency: int = 8
    database_url: str | None = None
    work_dir: Path | None = None
    seed: int | None = None
    fail_rate: float = 0.0
    fail_all: bool = False
    crash_after_seconds: float | None = None
    rollout: Mapping[str, str] | None = None
    after_halt_seconds: float | None = None
    server_workers: int = 1
    server_settings: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in self.server_settings or {}:
            if not name.startswith("JAVIA_") or not name[6:].replace("_", "").isalnum():
                raise SimulationError(
                    f"server setting {name!r}: expected a JAVIA_* environment variable name"
                )
        if not 1 <= self.devices <= MAX_DEVICES:
            raise SimulationError(
                f"devices is {self.devices}: expected 1 to {MAX_DEVICES:,} simulated devices"
            )
        if not (
            math.isfinite(self.heartbeat_seconds)
            and 0 < self.heartbeat_seconds <= MAX_HEARTBEAT_SECONDS
        ):
            raise SimulationError(
                f"heartbeat_seconds is {self.heartbeat_seconds}: expected a number of seconds "
                f"above 0 and at most {MAX_HEARTBEAT_SECONDS}"
            )
        if not 1 <= self.server_workers <= 256:
            raise SimulationError(
                f"server_workers is {self.server_workers}: expected 1 to 256 server processes"
            )
        if self.connections < 1 or self.register_concurrency < 1:
            raise SimulationError("connections and register_concurrency must be at least 1")
        if not 0 <= self.payload_bytes <= MAX_PAYLOAD_BYTES:
            raise SimulationError(
                f"payload_bytes is {self.payload_bytes}: expected 0 to {MAX_PAYLOAD_BYTES:,} bytes"
            )
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise SimulationError(
                f"timeout_seconds is {self.timeout_seconds}: expected a positive number of seconds"
            )
        if not (math.isfinite(self.fail_rate) and 0 <= self.fail_rate <= 1):
            raise SimulationError(
                f"fail_rate is {self.fail_rate}: expected a fraction from 0 to 1 (0.005 = 0.5 %)"
            )
        if self.crash_after_seconds is not None and not (
            math.isfinite(self.crash_after_seconds) and self.crash_after_seconds > 0
        ):
            raise SimulationError(
                f"crash_after_seconds is {self.crash_after_seconds}: expected seconds above 0"
            )
        if self.after_halt_seconds is not None and not (
            math.isfinite(self.after_halt_seconds) and self.after_halt_seconds >= 0
        ):
            raise SimulationError(
                f"after_halt_seconds is {self.after_halt_seconds}: expected seconds, 0 or more"
            )
        if self.work_dir is not None:
            _check_work_dir(self.work_dir)

    @property
    def seconds_after_halt(self) -> float:
        """How long the fleet keeps running once the rollout is seen halted (seconds)."""
        if self.after_halt_seconds is not None:
            return self.after_halt_seconds
        return (1 + _JITTER_ALLOWANCE) * self.heartbeat_seconds + 2.0

    @property
    def behaviour(self) -> ReleaseBehaviour:
        """How the published release fares on the devices."""
        return ReleaseBehaviour(
            fail_rate=self.fail_rate,
            fail_all=self.fail_all,
            crash_after_seconds=self.crash_after_seconds,
        )


# --------------------------------------------------------------------------- set-up


def _build_package(root: Path, payload_bytes: int) -> tuple[Any, dict[str, Any]]:
    """Sign an instant update ``UPDATE_VERSION`` of a tiny app; returns (package, keyring)."""
    from javia_core.keys import load_public_key
    from javia_core.manifest import key_id_for
    from javia_updates.keys import generate_keypair, load_private_key
    from javia_updates.packaging import build_package

    paths = generate_keypair(root / "operator", name="simulator")
    public_key = load_public_key(paths.public_path)
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "VERSION").write_text(f"{BASE_VERSION}\n", encoding="utf-8")
    (app_dir / "app.py").write_text("print('simulated device application')\n", encoding="utf-8")
    (app_dir / "data.bin").write_bytes(secrets.token_bytes(payload_bytes))
    package = build_package(
        app_dir,
        root / "package",
        version=Version.parse(UPDATE_VERSION),
        update_type=UpdateType.INSTANT,
        description="fleet simulator",
        system_packages=(),
        private_key=load_private_key(paths.private_path),
        now=datetime.now(UTC),
        app_name="simulated-app",
        write_version_file=False,
    )
    return package, {key_id_for(public_key): public_key}


async def _register(
    http: FleetHttp, api_key: str, count: int, concurrency: int
) -> list[SimulatedDevice]:
    slots = asyncio.Semaphore(concurrency)
    url = http.url(f"{API_PREFIX}/devices/register")

    async def one(index: int) -> SimulatedDevice:
        async with slots, http.slots:
            try:
                async with http.session.post(
                    url,
                    headers={"X-API-Key": api_key},
                    json={"device_name": f"sim-{index:06d}", "metadata": {"simulated": True}},
                ) as response:
                    body = await response.read()
                    status = response.status
            except HTTP_ERRORS as error:
                raise SimulationError(f"registering device {index} failed: {error!r}") from None
        if status != 201:
            text = body[:300].decode("utf-8", "replace")
            raise SimulationError(f"registering device {index} failed: HTTP {status}: {text}")
        answer = json.loads(body)
        return SimulatedDevice(
            uuid=answer["device_uuid"],
            headers={"Authorization": f"Bearer {answer['device_token']}"},
        )

    return list(await asyncio.gather(*(one(index) for index in range(count))))


def _check_work_dir(work_dir: Path) -> None:
    """Refuse a ``work_dir`` that is not a directory or already holds files.

    Raises:
        SimulationError: it exists and is not an empty directory.
    """
    if work_dir.exists() or work_dir.is_symlink():
        if not work_dir.is_dir():
            raise SimulationError(f"work directory {work_dir} exists and is not a directory")
        if any(work_dir.iterdir()):
            raise SimulationError(
                f"work directory {work_dir} is not empty: give a new or empty directory "
                "(the simulator writes a server, a signing key and a package there)"
            )


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the simulation runs, SIGTERM stops it like Ctrl-C: the server is stopped, scratch removed.

    Only in the main thread (where Python delivers signals); the previous
    handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _scratch(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:  # checked new or empty by SimulationConfig
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SimulationError(
                f"cannot create work directory {work_dir}: {error.strerror or error}"
            ) from None
        yield work_dir
        return
    path = Path(tempfile.mkdtemp(prefix="javia-simulate-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- run


def run_simulation(
    config: SimulationConfig, *, progress: Callable[[str], None] | None = None
) -> SimulationReport:
    """Run a whole simulation: server, registration, warm-up, instant publish, rollout.

    Args:
        config: what to simulate.
        progress: called with one line per phase (for a CLI); None: silent.

    Returns:
        The measurements; :attr:`SimulationReport.succeeded` says whether every
        device completed without a single failed request.

    Raises:
        SimulationError: the server did not start, a registration or the
            publish failed, or not every device was seen within the timeout.
    """
    from javia_devtools.demo import FleetError, LocalFleet
    from javia_updates.admin_client import AdminClient, ApiError, ServerUnreachableError

    say = progress or (lambda _line: None)
    wall_start = time.perf_counter()
    with _terminate_as_interrupt(), _scratch(config.work_dir) as root:
        fleet = LocalFleet(root / "fleet", heartbeat_seconds=config.heartbeat_seconds)
        extra_env = {"JAVIA_DATABASE_URL": config.database_url} if config.database_url else {}
        extra_env["JAVIA_WORKERS"] = str(config.server_workers)
        extra_env.update(config.server_settings or {})
        try:
            try:
                say(f"starting javia server on {fleet.url}")
                fleet.start_server(extra_env=extra_env, timeout=60)
            except FleetError as error:
                raise SimulationError(f"the server did not start: {error}") from None
            package, keyring = _build_package(root, config.payload_bytes)
            assert fleet.server is not None
            report = asyncio.run(
                _simulate(config, fleet.url, fleet.api_key, fleet.server.pid, package, keyring, say)
            )
            with AdminClient(fleet.url, fleet.api_key) as admin:
                try:
                    update = admin.get_update(UPDATE_VERSION)
                except (ApiError, ServerUnreachableError) as error:
                    raise SimulationError(
                        f"reading the update's progress failed: {error}"
                    ) from None
            report.installs_deferred = _installs_deferred(fleet.url, fleet.api_key)
            counts = update.status_counts
            report.server_completed = int(counts.get("completed", 0))
            report.server_started = sum(int(counts.get(name, 0)) for name in _STARTED_STATUSES)
            if update.rollout is not None:
                report.rollout_state = str(update.rollout.state)
                report.halt_reason = report.halt_reason or update.rollout.halt_reason
                if update.rollout.phase_counts:
                    report.first_phase_devices = sum(update.rollout.phase_counts[0].values())
        finally:
            fleet.stop()
    report.wall_seconds = round(time.perf_counter() - wall_start, 3)
    return report


def _installs_deferred(url: str, api_key: str) -> int | None:
    """``javia_installs_deferred_total`` from the server's ``/metrics`` (all workers); None if unreadable."""
    import httpx

    try:
        answer = httpx.get(f"{url}/metrics", headers={"X-API-Key": api_key}, timeout=30)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    for line in answer.text.splitlines():
        if line.startswith("javia_installs_deferred_total "):
            return int(float(line.split()[1]))
    return None


async def _simulate(
    config: SimulationConfig,
    url: str,
    api_key: str,
    server_pid: int,
    package: Any,
    keyring: dict[str, Any],
    say: Callable[[str], None],
) -> SimulationReport:
    from javia_updates.admin_client import AdminClient, ApiError, ServerUnreachableError

    # No limit on the whole request or on waiting for a free connection
    # (requests queue for one); connecting and each read get 60 s.
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=None,
        sock_connect=_REQUEST_TIMEOUT_SECONDS,
        sock_read=_REQUEST_TIMEOUT_SECONDS,
    )
    rng = random.Random(config.seed)
    # One session: aiohttp's pool costs about the same per request whatever
    # its size (a 2,000-device run measured 0.49 ms of simulator CPU per
    # request with one session of 64 connections, 0.55 ms with 16 sessions
    # of 4). Idle connections are dropped before the server's keep-alive
    # timeout (uvicorn: 5 s) could close one under a request being sent.
    connector = aiohttp.TCPConnector(
        limit=config.connections, limit_per_host=0, keepalive_timeout=_KEEPALIVE_SECONDS
    )
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        http = FleetHttp(url, session, asyncio.Semaphore(config.connections))
        say(f"registering {config.devices} devices through the admin API")
        started = time.perf_counter()
        devices = await _register(http, api_key, config.devices, config.register_concurrency)
        register_seconds = time.perf_counter() - started

        fleet = SimulatedFleet(http, devices, keyring, rng, config.behaviour)
        tasks = [
            asyncio.create_task(fleet.run_device(device, config.heartbeat_seconds))
            for device in devices
        ]
        try:
            say(
                f"waiting until every device has sent a heartbeat (interval {config.heartbeat_seconds} s)"
            )
            try:
                await asyncio.wait_for(
                    fleet.all_seen.wait(),
                    timeout=config.timeout_seconds + 3 * config.heartbeat_seconds,
                )
            except TimeoutError:
                seen = sum(device.seen for device in devices)
                raise SimulationError(
                    f"only {seen} of {config.devices} devices got a heartbeat answer in time; "
                    f"errors: {dict(fleet.tally.errors)}"
                ) from None

            say(f"publishing instant update {UPDATE_VERSION}")
            cpu_before = process_tree_cpu_seconds(server_pid)
            own_cpu_before = time.process_time()
            started = time.perf_counter()

            def publish() -> None:
                with AdminClient(url, api_key, timeout=120) as admin:
                    admin.publish(
                        manifest_path=package.manifest_path,
                        signature_path=package.signature_path,
                        payload_path=package.payload_path,
                        rollout=config.rollout,
                    )

            try:
                await asyncio.to_thread(publish)
            except (ApiError, ServerUnreachableError) as error:
                raise SimulationError(f"publishing failed: {error}") from None
            published_at = time.perf_counter()
            fleet.published_at = published_at
            publish_seconds = published_at - started
            # A device that completed a check-in during the publish may hold no
            # directive yet; it gets one at its next heartbeat.
            say("waiting for every device to finish, or for the rollout to halt")
            watch = RolloutWatch()
            watcher = asyncio.create_task(watch.follow(url, api_key))
            try:
                with suppress(TimeoutError):
                    await asyncio.wait_for(
                        _finished_or_halted(fleet, watch), timeout=config.timeout_seconds
                    )
                if watch.halted_at is not None:
                    say(f"rollout halted: {watch.halt_reason}")
                    await asyncio.sleep(config.seconds_after_halt)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            ended = time.perf_counter()
            cpu_after = process_tree_cpu_seconds(server_pid)
            own_cpu_seconds = time.process_time() - own_cpu_before
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    done = [
        device.completed_at - published_at for device in devices if device.completed_at is not None
    ]
    all_done = len(done) == len(devices)
    cpu_seconds = None
    if cpu_before is not None and cpu_after is not None:
        cpu_seconds = round(cpu_after - cpu_before, 3)
    span = ended - published_at
    halted_at = watch.halted_at
    return SimulationReport(
        devices=config.devices,
        heartbeat_seconds=config.heartbeat_seconds,
        register_seconds=round(register_seconds, 3),
        publish_seconds=round(publish_seconds, 3),
        completed=len(done),
        failed=sum(device.failed_at is not None for device in devices),
        server_completed=0,
        seconds_to_all_completed=round(max(done), 3) if all_done else None,
        completion_percentiles=percentiles(done, {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}),
        requests=dict(fleet.tally.requests),
        errors=dict(fleet.tally.errors),
        heartbeat_latency_ms=percentiles(
            fleet.tally.heartbeat_ms, {"p50": 0.5, "p99": 0.99, "max": 1.0}
        ),
        server_cpu_seconds=cpu_seconds,
        server_cpu_percent=(
            round(100 * cpu_seconds / span, 1) if cpu_seconds is not None and span > 0 else None
        ),
        server_rss_bytes=process_tree_rss_bytes(server_pid),
        wall_seconds=0.0,
        simulator_cpu_seconds=round(own_cpu_seconds, 3),
        started=sum(device.started_at is not None for device in devices),
        started_after_halt=(
            0
            if halted_at is None
            else sum(
                device.started_at is not None and device.started_at > halted_at
                for device in devices
            )
        ),
        halt_reason=watch.halt_reason,
        seconds_to_halt=None if halted_at is None else round(halted_at - published_at, 3),
        in_flight_at_halt=(
            0 if halted_at is None else sum(_in_flight(device, halted_at) for device in devices)
        ),
        seconds_first_failure_to_halt=_seconds_to(halted_at, fleet.failure_signals[:1]),
        seconds_last_failure_to_halt=_seconds_to(
            halted_at, [sent for sent in fleet.failure_signals if sent <= (halted_at or 0)][-1:]
        ),
    )


def _in_flight(device: SimulatedDevice, moment: float) -> bool:
    """Whether ``device`` had started the update and not finished it at ``moment``."""
    if device.started_at is None or device.started_at > moment:
        return False
    finished = device.completed_at if device.completed_at is not None else device.failed_at
    return finished is None or finished > moment


def _seconds_to(halted_at: float | None, signals: list[float]) -> float | None:
    """Seconds from the one failure signal in ``signals`` to the halt; None without either."""
    if halted_at is None or not signals:
        return None
    return round(halted_at - signals[0], 3)


async def _finished_or_halted(fleet: SimulatedFleet, watch: RolloutWatch) -> None:
    """Return once every device finished (completed or failed) or the rollout halted."""
    waits = [
        asyncio.create_task(fleet.all_completed.wait()),
        asyncio.create_task(watch.halted.wait()),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class RolloutWatch:
    """Reads the published update's rollout every :data:`ROLLOUT_POLL_SECONDS` through the admin API.

    Uses its own HTTP connection, so it does not queue behind the devices'
    requests. ``halted_at`` is the ``time.perf_counter`` second of the first
    answer that said ``halted``.
    """

    def __init__(self) -> None:
        self.state: str | None = None
        self.halt_reason: str | None = None
        self.halted_at: float | None = None
        self.halted = asyncio.Event()

    async def follow(self, url: str, api_key: str) -> None:
        """Poll until cancelled or the rollout halted; a failed read is retried at the next poll."""
        timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_SECONDS)
        path = f"{url}{API_PREFIX}/updates/{UPDATE_VERSION}"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                with suppress(*HTTP_ERRORS, ValueError):
                    async with session.get(path, headers={"X-API-Key": api_key}) as response:
                        answer = await response.json() if response.status == 200 else {}
                    rollout = answer.get("rollout") or {}
                    self.state = rollout.get("state", self.state)
                    if self.state == "halted":
                        self.halted_at = time.perf_counter()
                        self.halt_reason = rollout.get("halt_reason")
                        self.halted.set()
                        return
                await asyncio.sleep(ROLLOUT_POLL_SECONDS)
