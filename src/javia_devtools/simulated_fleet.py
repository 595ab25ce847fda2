"""The simulated devices of ``javia simulate``: each one an asyncio task speaking the device API.

A :class:`SimulatedDevice` heartbeats at the interval the server gives
(plus or minus 10 % jitter), and when the answer carries an install
directive it does what the agent does on the wire (DESIGN.md section 6):
reports ``downloading``, verifies the manifest's signature, streams the
payload checking its size and SHA-256, reports ``installing`` and
``completed``. :class:`SimulatedFleet` runs them over one shared HTTP
session and counts every request and failure in a :class:`Tally`.
Nothing is installed: this measures the server and the wire.

A :class:`ReleaseBehaviour` makes the published release bad, for rollout
benchmarks (issue 13): some or all installs report ``failed`` after
``installing``, or the application of a release that reported ``completed``
starts crashing ``crash_after_seconds`` later. Every heartbeat carries
``application`` like the agent's (:class:`javia_core.models.ApplicationHealth`):
after such a crash its ``restarts`` counts one per ``crash_after_seconds``
and ``last_exit_status`` is -11 (SIGSEGV). The fleet notes when the first
failure signal left (a ``failed`` report, or a heartbeat reporting a crash)
and when each device started the update, so a rollout benchmark can tell the
devices exposed before and after a halt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp

from javia_core.errors import JaviaError

__all__ = [
    "API_PREFIX",
    "BASE_VERSION",
    "HTTP_ERRORS",
    "FleetHttp",
    "ReleaseBehaviour",
    "RequestFailed",
    "SimulatedDevice",
    "SimulatedFleet",
    "Tally",
]

#: The version every simulated device runs at the start.
BASE_VERSION = "v1.0.0"
#: The device API's path prefix.
API_PREFIX = "/api/v1"
_JITTER = 0.1  # fraction of the heartbeat interval, like the agent's default
_DOWNLOAD_CHUNK_BYTES = 64 * 1024

#: What a failed request raises: aiohttp's errors, and the timeouts (asyncio's
#: TimeoutError; aiohttp's own timeout errors are ClientError subclasses too).
HTTP_ERRORS = (aiohttp.ClientError, TimeoutError)
#: The exit status a simulated crash reports (minus SIGSEGV).
CRASH_EXIT_STATUS = -11


@dataclass(frozen=True)
class ReleaseBehaviour:
    """How the published release fares on the simulated devices.

    Attributes:
        fail_rate: fraction (0 to 1) of installs that report ``failed``.
        fail_all: every install reports ``failed``.
        crash_after_seconds: the application of a completed install crashes
            (and is restarted) every this many seconds after ``completed``;
            ``None``: it never crashes.
    """

    fail_rate: float = 0.0
    fail_all: bool = False
    crash_after_seconds: float | None = None

    def install_fails(self, rng: random.Random) -> bool:
        """Whether one install fails (draws from ``rng`` only with a rate set)."""
        return self.fail_all or (self.fail_rate > 0 and rng.random() < self.fail_rate)

    def application(self, installed_at: float | None, now: float) -> dict[str, Any]:
        """The heartbeat's ``application`` object ``now`` (``time.perf_counter`` seconds).

        Args:
            installed_at: when the release reported ``completed``; ``None``
                for the base version, which never crashes.
        """
        crashes = 0
        if installed_at is not None and self.crash_after_seconds is not None:
            crashes = int(max(0.0, now - installed_at) // self.crash_after_seconds)
        return {
            "restarts": crashes,
            "last_exit_status": CRASH_EXIT_STATUS if crashes else None,
            "running": True,
        }


@dataclass
class FleetHttp:
    """The one HTTP session all devices share, and a gate of as many requests as connections.

    The session's connector holds ``connections`` keep-alive connections. The
    gate (an asyncio semaphore) serves waiting requests first come, first
    served; the connector's own ``limit`` alone would not: it hands an idle
    connection to whichever request asks first, so a device in the middle of
    an install (six requests in a row) would overtake queued heartbeats.
    """

    base_url: str
    session: aiohttp.ClientSession
    slots: asyncio.Semaphore

    def url(self, path: str) -> str:
        """``path`` (e.g. a directive's ``/api/v1/...``) resolved against the server's root URL."""
        return urljoin(self.base_url, path)


@dataclass
class SimulatedDevice:
    """One simulated device: its credentials, the version it runs, and when it started,
    completed or failed the update (``time.perf_counter`` seconds)."""

    uuid: str
    headers: dict[str, str]
    version: str = BASE_VERSION
    seen: bool = False
    started_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    crash_reported: bool = False


@dataclass
class Tally:
    """Requests sent and failures, by kind; heartbeat round trips in milliseconds."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    heartbeat_ms: list[float] = field(default_factory=list)


class RequestFailed(Exception):
    """One request or verification failed; already counted in the tally."""


class SimulatedFleet:
    """The simulated devices, sharing one HTTP session."""

    def __init__(
        self,
        http: FleetHttp,
        devices: list[SimulatedDevice],
        keyring: dict[str, Any],
        rng: random.Random,
        behaviour: ReleaseBehaviour | None = None,
    ) -> None:
        self.http = http
        self.behaviour = behaviour or ReleaseBehaviour()
        self.devices = devices
        self.keyring = keyring
        self.rng = rng
        self.tally = Tally()
        self.published_at: float | None = None
        #: When each failure signal was sent (``time.perf_counter`` seconds, in
        #: order): a ``failed`` report, or a device's first heartbeat reporting
        #: its application crashed.
        self.failure_signals: list[float] = []
        self.all_seen = asyncio.Event()
        #: Set once every device reported ``completed`` or ``failed``.
        self.all_completed = asyncio.Event()
        self._unseen = len(devices)
        self._incomplete = len(devices)

    async def _call(
        self, kind: str, method: str, path: str, device: SimulatedDevice, **kwargs: Any
    ) -> bytes:
        """Send one request and read the whole answer; returns its body.

        Raises:
            RequestFailed: no answer (counted as ``"KIND: ErrorClass"``) or an
                HTTP status of 400 or more (counted as ``"KIND: HTTP 500"``).
        """
        self.tally.requests[kind] += 1
        async with self.http.slots:
            try:
                async with self.http.session.request(
                    method, self.http.url(path), headers=device.headers, **kwargs
                ) as response:
                    # Reading the whole body (error answers too) hands the
                    # connection back for the next request.
                    body = await response.read()
                    status = response.status
            except HTTP_ERRORS as error:
                self.tally.errors[f"{kind}: {type(error).__name__}"] += 1
                raise RequestFailed from None
        if status >= 400:
            self.tally.errors[f"{kind}: HTTP {status}"] += 1
            raise RequestFailed
        return body

    async def run_device(self, device: SimulatedDevice, interval: float) -> None:
        """Heartbeat forever (until cancelled), installing what the server directs."""
        await asyncio.sleep(self.rng.uniform(0, interval))
        while True:
            with suppress(RequestFailed):
                interval = await self._heartbeat(device, interval)
            await asyncio.sleep(interval * (1 + self.rng.uniform(-_JITTER, _JITTER)))

    async def _heartbeat(self, device: SimulatedDevice, interval: float) -> float:
        started = time.perf_counter()
        application = self.behaviour.application(device.completed_at, started)
        if application["restarts"] and not device.crash_reported:
            device.crash_reported = True
            self.failure_signals.append(started)
        body = json.loads(
            await self._call(
                "heartbeat",
                "POST",
                f"{API_PREFIX}/devices/{device.uuid}/heartbeat",
                device,
                json={
                    "current_version": device.version,
                    "status": "online",
                    "metadata": {},
                    "application": application,
                },
            )
        )
        self.tally.heartbeat_ms.append((time.perf_counter() - started) * 1000)
        if not device.seen:
            device.seen = True
            self._unseen -= 1
            if self._unseen == 0:
                self.all_seen.set()
        directive = body.get("update")
        if directive is not None and directive["version"] != device.version:
            await self._install(device, directive)
        return float(body.get("heartbeat_interval_seconds") or interval)

    async def _report(
        self, device: SimulatedDevice, update_id: int, status: str, message: str | None = None
    ) -> None:
        await self._call(
            "status",
            "POST",
            f"{API_PREFIX}/devices/{device.uuid}/updates/{update_id}/status",
            device,
            json={"status": status, "error_message": message},
        )

    async def _install(self, device: SimulatedDevice, directive: dict[str, Any]) -> None:
        from javia_core.manifest import verify_manifest

        update_id = int(directive["update_id"])
        if device.started_at is None:
            device.started_at = time.perf_counter()
        await self._report(device, update_id, "downloading")
        manifest_bytes = await self._call("manifest", "GET", directive["manifest_url"], device)
        signature_bytes = await self._call("signature", "GET", directive["signature_url"], device)
        try:
            manifest = verify_manifest(manifest_bytes, signature_bytes, self.keyring)
        except JaviaError as error:
            self.tally.errors[f"verify: {type(error).__name__}"] += 1
            raise RequestFailed from None
        digest = hashlib.sha256()
        size = 0
        self.tally.requests["download"] += 1
        async with self.http.slots:
            try:
                async with self.http.session.get(
                    self.http.url(directive["download_url"]), headers=device.headers
                ) as response:
                    if response.status >= 400:
                        await response.read()
                        self.tally.errors[f"download: HTTP {response.status}"] += 1
                        raise RequestFailed
                    # Streamed like the agent does; a payload longer than the
                    # manifest says stops the read (and drops that connection).
                    async for chunk in response.content.iter_chunked(_DOWNLOAD_CHUNK_BYTES):
                        size += len(chunk)
                        if size > manifest.archive.size:
                            break
                        digest.update(chunk)
            except HTTP_ERRORS as error:
                self.tally.errors[f"download: {type(error).__name__}"] += 1
                raise RequestFailed from None
        if size != manifest.archive.size or digest.hexdigest() != manifest.archive.sha256:
            self.tally.errors["verify: payload does not match the manifest"] += 1
            raise RequestFailed
        await self._report(device, update_id, "installing")
        if self.behaviour.install_fails(self.rng):
            self.failure_signals.append(time.perf_counter())
            await self._report(device, update_id, "failed", "simulated failure")
            if device.failed_at is None:
                device.failed_at = time.perf_counter()
                self._finished()
            return
        await self._report(device, update_id, "completed")
        device.version = manifest.version
        if device.completed_at is None and self.published_at is not None:
            device.completed_at = time.perf_counter()
            self._finished()

    def _finished(self) -> None:
        self._incomplete -= 1
        if self._incomplete == 0:
            self.all_completed.set()
