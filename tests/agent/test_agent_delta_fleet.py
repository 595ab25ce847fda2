"""Delta downloads and bandwidth with real processes: a server, real agents, the application.

The server's own counters (``GET /api/v1/downloads/stats``: body bytes sent
per kind) say what crossed the wire:

- a second release with one changed file downloads only that file;
- a base file tampered with on disk is detected by hash and downloaded;
- a pruned base release falls back to the whole archive;
- a forged object is refused; with a forged archive too, nothing installs and
  the running release stays untouched;
- a server at its download cap answers 503 with ``Retry-After`` and the agent
  comes back and finishes;
- a download rate limit holds the agent near its cap.

This module starts its own server (a download cap of 1, ``Retry-After: 1``).
Each test runs a real agent and application on a provisioned device (a few
seconds each on a quiet machine); the 503 test publishes 8 MB, enough to
keep loopback buffers from absorbing the download that holds the only slot.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from javia_devtools.demo import FleetDevice
from javia_updates.packaging import BuiltPackage

from .fleet import CrashFleet, app_alive, assert_complete_tree, current_version, wait_for

pytestmark = pytest.mark.e2e

#: Incompressible data the application carries: its archive is about this large.
_DATA_BYTES = 400_000


@pytest.fixture(scope="module")
def delta_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashFleet]:
    fleet = CrashFleet(
        tmp_path_factory.mktemp("delta-fleet"), heartbeat_seconds=0.5, health_seconds=0.5
    )
    fleet.generate_key()
    fleet.start_server(
        extra_env={"JAVIA_MAX_CONCURRENT_DOWNLOADS": "1", "JAVIA_DOWNLOAD_BUSY_RETRY_SECONDS": "1"}
    )
    try:
        yield fleet
    finally:
        fleet.stop()


def _files(seed: int, changed: dict[str, bytes] | None = None) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"data/part{n}.bin": rng.randbytes(_DATA_BYTES // 4) for n in range(4)}
    files.update(changed or {})
    return files


def _stats(fleet: CrashFleet) -> dict[str, Any]:
    answer = httpx.get(
        f"{fleet.url}/api/v1/downloads/stats", headers={"X-API-Key": fleet.api_key}, timeout=10
    )
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _sent(before: dict[str, Any], after: dict[str, Any], kind: str) -> int:
    return int(after["bytes"].get(kind, 0)) - int(before["bytes"].get(kind, 0))


@pytest.fixture
def device(delta_fleet: CrashFleet, request: pytest.FixtureRequest) -> Iterator[FleetDevice]:
    """A device running v1.0.0 of an application with 400 KB of data files."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[-40:].strip("-")
    device = delta_fleet.provision(name, delta_fleet.package("v1.0.0", extra_files=_files(1)))
    try:
        yield device
    finally:
        delta_fleet.stop_device(device)
        delta_fleet.agent_overrides.pop(device.name, None)


def _install(
    fleet: CrashFleet, device: FleetDevice, package: BuiltPackage, *, final: str = "completed"
) -> None:
    update_id = fleet.publish_to(device, package)
    if device.agent is None or device.agent.poll() is not None:
        fleet.start_agent_with(device)
    wait_for(
        lambda: (row := fleet.row(device, update_id)) and row.status == final,
        60,
        f"{package.manifest.version} {final} on the server",
    )


def test_one_changed_file_downloads_only_that_file(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    new = delta_fleet.package("v31.0.0", extra_files=_files(1, {"data/part2.bin": b"changed\n"}))
    before = _stats(delta_fleet)
    _install(delta_fleet, device, new)
    after = _stats(delta_fleet)

    assert _sent(before, after, "archive") == 0
    # VERSION and data/part2.bin changed: two small objects, nothing else.
    assert after["requests"].get("objects", 0) - before["requests"].get("objects", 0) == 2
    assert 0 < _sent(before, after, "objects") < 0.005 * new.manifest.archive.size
    wait_for(lambda: current_version(device) == "v31.0.0", 20, "current to be v31.0.0")
    assert_complete_tree(device.install_root / "releases" / "v31.0.0", new.manifest)


def test_a_tampered_base_file_is_detected_and_downloaded(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    tampered = device.install_root / "releases" / "v1.0.0" / "data" / "part0.bin"
    data = bytearray(tampered.read_bytes())
    data[100] ^= 0xFF  # same size: only the hash tells
    os.chmod(tampered, 0o644)
    tampered.write_bytes(bytes(data))
    new = delta_fleet.package("v32.0.0", extra_files=_files(1))
    before = _stats(delta_fleet)
    _install(delta_fleet, device, new)
    after = _stats(delta_fleet)

    assert _sent(before, after, "archive") == 0
    # VERSION and the tampered file: the rest was reused.
    assert after["requests"].get("objects", 0) - before["requests"].get("objects", 0) == 2
    assert _sent(before, after, "objects") > _DATA_BYTES // 4  # the random part itself
    installed = device.install_root / "releases" / "v32.0.0" / "data" / "part0.bin"
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == next(
        entry.sha256 for entry in new.manifest.files if entry.path == "data/part0.bin"
    )


def test_a_pruned_base_falls_back_to_the_archive(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    new = delta_fleet.package("v33.0.0", extra_files=_files(1))
    delta_fleet.start_agent_with(device)
    wait_for(lambda: app_alive(device), 30, "the application to start")
    # The running release's data is gone from disk (pruned by hand, say).
    shutil.rmtree(device.install_root / "releases" / "v1.0.0" / "data")
    before = _stats(delta_fleet)
    _install(delta_fleet, device, new)
    after = _stats(delta_fleet)

    assert _sent(before, after, "archive") == new.manifest.archive.size
    assert after["requests"].get("objects", 0) == before["requests"].get("objects", 0)
    assert_complete_tree(device.install_root / "releases" / "v33.0.0", new.manifest)


def _server_object(fleet: CrashFleet, sha256: str) -> Path:
    return fleet.root / "server" / "packages" / "objects" / sha256 / "object.zst"


def test_a_forged_object_is_refused_and_the_running_release_stays_untouched(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    import zstandard

    changed = {"data/part3.bin": b"the signed content\n"}
    new = delta_fleet.package("v34.0.0", extra_files=_files(1, changed))
    update_id = delta_fleet.publish_to(device, new)
    wanted = next(entry for entry in new.manifest.files if entry.path == "data/part3.bin")
    # The server (or its storage) turns hostile: the object and the archive are forged.
    forged = zstandard.ZstdCompressor().compress(b"the forged content\n")  # same length
    _server_object(delta_fleet, wanted.sha256).write_bytes(forged)
    payloads = list((delta_fleet.root / "server" / "packages" / "v34.0.0").glob("*/payload.tar.gz"))
    assert len(payloads) == 1
    payloads[0].write_bytes(b"\0" * new.manifest.archive.size)
    release_v1 = device.install_root / "releases" / "v1.0.0"
    before = {path: path.read_bytes() for path in release_v1.rglob("*") if path.is_file()}

    delta_fleet.start_agent_with(device)
    log = wait_for(
        lambda: "server_fault" in (text := device.agent_log.read_text()) and text,
        60,
        "the agent to refuse the server's bytes",
    )
    assert "data/part3.bin: the server's object does not match the signed manifest" in log
    assert "payload SHA-256 is" in log  # the archive it fell back to was refused too
    assert delta_fleet.row(device, update_id).status != "completed"
    assert current_version(device) == "v1.0.0" and app_alive(device)
    assert not (device.install_root / "releases" / "v34.0.0").exists()
    assert {path: path.read_bytes() for path in release_v1.rglob("*") if path.is_file()} == before


def test_a_busy_server_answers_503_and_the_agent_comes_back(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    # 8 MB that a client with a tiny receive buffer never reads: the server's
    # only download slot stays taken (loopback send buffers hold a few MB).
    big = delta_fleet.package("v35.0.0", extra_files={"big.bin": random.randbytes(8_000_000)})
    big_id = delta_fleet.publish_to(device, big)
    new = delta_fleet.package("v35.1.0", extra_files=_files(1, {"data/part1.bin": b"busy\n"}))
    update_id = delta_fleet.publish_to(device, new)  # supersedes v35.0.0 on the device
    before = _stats(delta_fleet)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    holder.connect(("127.0.0.1", delta_fleet.port))
    holder.sendall(
        f"GET /api/v1/updates/{big_id}/download HTTP/1.1\r\nHost: x\r\n"
        f"X-API-Key: {delta_fleet.api_key}\r\n\r\n".encode()
    )
    try:
        wait_for(lambda: _stats(delta_fleet)["in_flight"] == 1, 10, "the slot to be taken")
        delta_fleet.start_agent_with(device)
        wait_for(
            lambda: _stats(delta_fleet)["refused"] > before["refused"], 30, "a refused download"
        )
    finally:
        holder.close()  # the agent, waiting Retry-After (1 s) plus jitter, asks again
    wait_for(
        lambda: (row := delta_fleet.row(device, update_id)) and row.status == "completed",
        60,
        "v35.1.0 to complete once the slot is free",
    )
    log = device.agent_log.read_text()
    assert "HTTP 503" in log or "503" in log


def test_the_download_rate_limit_holds(delta_fleet: CrashFleet, device: FleetDevice) -> None:
    delta_fleet.agent_overrides[device.name] = {"JAVIA_AGENT_DOWNLOAD_RATE_LIMIT": "64KiB"}
    changed = {"data/part0.bin": random.Random(7).randbytes(_DATA_BYTES // 4)}
    new = delta_fleet.package("v36.0.0", extra_files=_files(1, changed))
    delta_fleet.start_agent_with(device)
    wait_for(lambda: app_alive(device), 30, "the application to start")
    update_id = delta_fleet.publish_to(device, new)
    started = time.monotonic()
    wait_for(
        lambda: (row := delta_fleet.row(device, update_id)) and row.status == "installing",
        60,
        "the download to finish",
        poll=0.02,
    )
    elapsed = time.monotonic() - started
    # 100 KB of incompressible data at 64 KiB/s, after a first burst of 16 KiB:
    # at least (100,000 - 16,384) / 65,536 s = 1.28 s (unlimited: a few milliseconds).
    assert elapsed >= (_DATA_BYTES // 4 - 16_384) / 65_536


def test_a_package_without_a_delta_index_is_downloaded_whole(
    delta_fleet: CrashFleet, device: FleetDevice
) -> None:
    # As a package published before per-file objects existed.
    new = delta_fleet.package("v37.0.0", extra_files=_files(1))
    update_id = delta_fleet.publish_to(device, new)
    indexes = list(
        (delta_fleet.root / "server" / "packages" / "v37.0.0").glob("*/delta-index.json")
    )
    assert len(indexes) == 1
    indexes[0].unlink()
    before = _stats(delta_fleet)
    delta_fleet.start_agent_with(device)
    wait_for(
        lambda: (row := delta_fleet.row(device, update_id)) and row.status == "completed",
        60,
        "v37.0.0 to complete",
    )
    after = _stats(delta_fleet)
    assert _sent(before, after, "archive") == new.manifest.archive.size
    assert after["requests"].get("objects", 0) == before["requests"].get("objects", 0)
