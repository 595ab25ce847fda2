"""Instant reach over the wake-up channel (issue 14): many devices holding it, one publish.

Set-up: a real ``javia server`` (local backend, SQLite, default settings but
a 600 s hold so no idle answer falls inside the measurement), ``--devices``
devices registered and seen (one heartbeat each, so an instant publish gives
each a row). Each simulated device (an aiohttp task in this process) then
holds ``GET /api/v1/devices/{uuid}/wakeup`` and, when told, heartbeats at
once, as the agent does; a 503 is retried after its ``Retry-After`` plus
jitter (the admission rate: 500 new held requests per second).

Measured:

- seconds from the publish request to 95 % and 100 % of the devices woken,
  and to 95 % / 100 % holding the directive (their heartbeat answered with
  the update: the moment a real agent starts downloading);
- the server's memory per held request: RSS with every device holding,
  minus RSS before any held, divided by the devices;
- the time for every device to be admitted (the bounded reconnect rate after
  a restart);
- idle bytes per device per month: the HTTP bytes of one idle wake-up cycle
  and of one heartbeat, measured on the wire here (plain HTTP), times the
  cycles of a 30-day month at the default hold and heartbeat interval, plus
  the TCP/IP and TLS overhead stated in the notes, against balena's 80 MB.

Run alone: ``python bench/bench_wakeup.py --devices 10000`` (the issue's
size; needs ``ulimit -n`` above twice the devices).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp

import benchlib
from benchlib import BenchResult, Row
from javia_devtools.simulate import BASE_VERSION, _build_package

#: Default server hold and agent heartbeat, in seconds (docs/agent.md).
DEFAULT_HOLD_SECONDS = 50.0
HEARTBEAT_SECONDS = 300.0
RECONNECT_SECONDS = 1.25  # the server's 1 s with the agent's mean jitter
MONTH_SECONDS = 30 * 86_400
BALENA_BYTES_PER_MONTH = 80e6
#: Per request/answer exchange on a kept-alive connection: 4 TCP segments (request,
#: ACK, answer, ACK) of 52 bytes of IPv4+TCP headers with timestamps, and 2 TLS 1.3
#: records of 22 bytes of framing and tag.
EXCHANGE_OVERHEAD_BYTES = 4 * 52 + 2 * 22
#: A heartbeat every 300 s outlives the server's 5 s keep-alive: a new TCP connection
#: (3-way handshake, FIN/ACK both ways: 7 segments) and a full TLS 1.3 handshake with an
#: ECDSA certificate chain of two certificates (about 3.5 KB on the wire; more with RSA).
HEARTBEAT_CONNECTION_BYTES = 7 * 52 + 3500


async def _register(url: str, api_key: str, count: int) -> list[tuple[str, str]]:
    devices: list[tuple[str, str]] = []
    limit = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(base_url=url) as session:

        async def one(index: int) -> None:
            async with limit:
                async with session.post(
                    "/api/v1/devices/register",
                    headers={"X-API-Key": api_key},
                    json={"device_name": f"bench-{index:05d}"},
                ) as answer:
                    body = await answer.json()
                uid, token = body["device_uuid"], body["device_token"]
                async with session.post(
                    f"/api/v1/devices/{uid}/heartbeat",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"current_version": BASE_VERSION},
                ) as beat:
                    beat.raise_for_status()
                devices.append((uid, token))

        await asyncio.gather(*(one(i) for i in range(count)))
    return devices


class Fleet:
    """Simulated devices holding the channel; times are ``time.monotonic()``."""

    def __init__(self, url: str, devices: list[tuple[str, str]]) -> None:
        self.url = url
        self.devices = devices
        self.woken: list[float] = []
        self.directed: list[float] = []
        self.refused = 0
        self.deferred = 0
        self.heartbeat_errors = 0
        self.admitted_at: list[float] = []
        self.stop = asyncio.Event()

    async def device(self, session: aiohttp.ClientSession, uid: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        rng = random.Random(uid)
        woken = False
        while not self.stop.is_set():
            try:
                async with session.get(
                    f"/api/v1/devices/{uid}/wakeup", params={"wait": "600"}, headers=headers
                ) as answer:
                    if answer.status == 503:
                        self.refused += 1
                        delay = float(answer.headers.get("Retry-After", "1"))
                        await asyncio.sleep(delay * (1 + rng.uniform(0, 0.5)))
                        continue
                    body = await answer.json()
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(rng.uniform(1, 2))
                continue
            if body.get("heartbeat"):
                if not woken:  # the first wake-up counts for the reach
                    woken = True
                    self.woken.append(time.monotonic())
                update = await self._heartbeat(session, uid, headers, rng)
                if update is not None:
                    self.directed.append(time.monotonic())
                    return
                # No directive (install admission deferred it): hold the
                # channel again, as the agent does, until woken once more.
                self.deferred += 1

    async def _heartbeat(
        self, session: aiohttp.ClientSession, uid: str, headers: dict[str, str], rng: random.Random
    ) -> Any:
        """One heartbeat, tried again after 1-2 s while it fails (as the agent does)."""
        while True:
            try:
                async with session.post(
                    f"/api/v1/devices/{uid}/heartbeat",
                    headers=headers,
                    json={"current_version": BASE_VERSION},
                ) as beat:
                    beat.raise_for_status()
                    return (await beat.json()).get("update")
            except (TimeoutError, aiohttp.ClientError, ValueError):
                self.heartbeat_errors += 1
                await asyncio.sleep(rng.uniform(1, 2))


def _percentile_seconds(
    times: list[float], start: float, fraction: float, total: int
) -> float | None:
    needed = max(1, int(round(fraction * total)))
    ordered = sorted(times)
    return ordered[needed - 1] - start if len(ordered) >= needed else None


async def _held(session: aiohttp.ClientSession, api_key: str) -> int:
    async with session.get("/api/v1/wakeups", headers={"X-API-Key": api_key}) as answer:
        return int((await answer.json())["held"])


def _wire_bytes(url: str, uid: str, token: str) -> tuple[int, int]:
    """HTTP bytes (request + answer, headers included) of one idle cycle and one heartbeat."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)

    def exchange(request: bytes) -> int:
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            return len(request) + len(head) + 4 + len(body)

    host = f"{parts.hostname}:{parts.port}"
    common = (
        f"Host: {host}\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n"
        f"User-Agent: javia-agent wake-up\r\nAuthorization: Bearer {token}\r\n"
    )
    idle = exchange(f"GET /api/v1/devices/{uid}/wakeup?wait=5 HTTP/1.1\r\n{common}\r\n".encode())
    beat_body = json.dumps(
        {
            "current_version": BASE_VERSION,
            "status": "online",
            "metadata": {
                "hostname": "pi-kitchen",
                "model": "Raspberry Pi Zero 2 W Rev 1.0",
                "os": "Debian GNU/Linux 12 (bookworm)",
                "agent_version": "0.1.0",
                "ip_address": "192.168.1.23",
            },
        }
    )
    heartbeat = exchange(
        (
            f"POST /api/v1/devices/{uid}/heartbeat HTTP/1.1\r\n{common}"
            f"Content-Type: application/json\r\nContent-Length: {len(beat_body)}\r\n\r\n{beat_body}"
        ).encode()
    )
    return idle, heartbeat


async def _measure(
    url: str, api_key: str, server_pid: int, devices: list[tuple[str, str]], package: Any
) -> dict[str, Any]:
    fleet = Fleet(url, devices)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=900)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as session:
        await asyncio.sleep(1.0)
        before = benchlib.process_memory_bytes(server_pid) or {"rss": 0}
        connect_started = time.monotonic()
        tasks = [asyncio.create_task(fleet.device(session, uid, token)) for uid, token in devices]
        while await _held(session, api_key) < len(devices):
            await asyncio.sleep(0.25)
        admitted_seconds = time.monotonic() - connect_started
        await asyncio.sleep(1.0)
        after = benchlib.process_memory_bytes(server_pid) or {"rss": 0}
        held = await _held(session, api_key)
        form = aiohttp.FormData()
        for field, path in (
            ("manifest", package.manifest_path),
            ("signature", package.signature_path),
            ("payload", package.payload_path),
        ):
            form.add_field(field, Path(path).read_bytes(), filename=Path(path).name)
        cpu_before = benchlib.process_cpu_seconds(server_pid)
        published_at = time.monotonic()
        async with session.post(
            "/api/v1/updates/", data=form, headers={"X-API-Key": api_key}
        ) as answer:
            assert answer.status == 201, await answer.text()
        publish_seconds = time.monotonic() - published_at
        deadline = time.monotonic() + 300
        while len(fleet.directed) < len(devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        cpu_after = benchlib.process_cpu_seconds(server_pid)
        fleet.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    total = len(devices)
    return {
        "held": held,
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "admitted_seconds": admitted_seconds,
        "refused": fleet.refused,
        "deferred": fleet.deferred,
        "heartbeat_errors": fleet.heartbeat_errors,
        "publish_seconds": publish_seconds,
        "woken_95": _percentile_seconds(fleet.woken, published_at, 0.95, total),
        "woken_100": _percentile_seconds(fleet.woken, published_at, 1.0, total),
        "directed_95": _percentile_seconds(fleet.directed, published_at, 0.95, total),
        "directed_100": _percentile_seconds(fleet.directed, published_at, 1.0, total),
        "server_cpu_seconds": None
        if cpu_before is None or cpu_after is None
        else cpu_after - cpu_before,
        "woken": len(fleet.woken),
        "directed": len(fleet.directed),
    }


def main() -> None:
    """Measure, print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=benchlib.positive(int), default=2000)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < 2 * args.devices + 100:
        sys.exit(
            f"ulimit -n is {limit}: {args.devices} devices need at least {2 * args.devices + 100}"
        )
    result = BenchResult(
        name="wakeup",
        title="Instant reach over the wake-up channel",
        command=f"python bench/bench_wakeup.py --devices {args.devices}",
    )
    env = {"JAVIA_WAKEUP_HOLD_SECONDS": "600"}
    with (
        benchlib.scratch_dir("wakeup") as root,
        benchlib.javia_server(root / "fleet", env=env) as server,
    ):
        assert server.server is not None
        devices = asyncio.run(_register(server.url, server.api_key, args.devices))
        package, _keyring = _build_package(root, 64 * 1024)
        idle_bytes, heartbeat_bytes = _wire_bytes(server.url, *devices[0])
        numbers = asyncio.run(
            _measure(server.url, server.api_key, server.server.pid, devices, package)
        )

    def seconds(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.2f} s"

    n = args.devices
    result.rows.append(
        Row(
            f"publish → devices woken, 95 % / 100 % of {n}",
            f"{seconds(numbers['woken_95'])} / {seconds(numbers['woken_100'])}",
            target="instant starts within 5 s",
            met=numbers["woken_100"] is not None and numbers["woken_100"] <= 5,
            values=numbers,
        )
    )
    result.rows.append(
        Row(
            f"publish → heartbeat answered with the update (downloading), 95 % / 100 % of {n}",
            f"{seconds(numbers['directed_95'])} / {seconds(numbers['directed_100'])}",
            reference="300 s (next heartbeat, before)",
            target="≤ 5 s",
            met=numbers["directed_100"] is not None and numbers["directed_100"] <= 5,
        )
    )
    result.rows.append(
        Row(
            "woken heartbeats answered without the update (install admission deferred it; "
            "the device is woken again at the server's pace)",
            f"{numbers['deferred']:,}",
        )
    )
    result.rows.append(
        Row(
            "woken heartbeats that failed (connection reset, timeout, error status) and were "
            "sent again 1-2 s later",
            f"{numbers['heartbeat_errors']:,}",
        )
    )
    per_connection = (numbers["rss_after"] - numbers["rss_before"]) / max(1, numbers["held"])
    result.rows.append(
        Row(
            "server memory per held request (RSS delta / held)",
            f"{per_connection / 1024:.1f} KiB ({numbers['held']} held, "
            f"RSS {numbers['rss_before'] / 2**20:.0f} → {numbers['rss_after'] / 2**20:.0f} MiB)",
        )
    )
    result.rows.append(
        Row(
            f"all {n} admitted at 500 new held requests/s",
            f"{numbers['admitted_seconds']:.1f} s ({numbers['refused']} answers 503 + Retry-After)",
            target=f"≥ {n / 500:.0f} s (bounded rate)",
        )
    )
    cycles = MONTH_SECONDS / (DEFAULT_HOLD_SECONDS + RECONNECT_SECONDS)
    heartbeats = MONTH_SECONDS / HEARTBEAT_SECONDS
    channel = cycles * (idle_bytes + EXCHANGE_OVERHEAD_BYTES)
    beats = heartbeats * (heartbeat_bytes + EXCHANGE_OVERHEAD_BYTES + HEARTBEAT_CONNECTION_BYTES)
    result.rows.append(
        Row(
            "idle bytes per device per month (channel + heartbeats)",
            f"{(channel + beats) / 1e6:.1f} MB (channel {channel / 1e6:.1f} MB, heartbeats {beats / 1e6:.1f} MB)",
            reference="balena 80 MB",
            ratio=benchlib.ratio_text(channel + beats, BALENA_BYTES_PER_MONTH),
            target="below balena",
            met=channel + beats < BALENA_BYTES_PER_MONTH,
            values={"idle_cycle_http_bytes": idle_bytes, "heartbeat_http_bytes": heartbeat_bytes},
        )
    )
    cpu = numbers["server_cpu_seconds"]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    result.notes.append(
        f"{n} simulated devices (aiohttp, one process) and the server on the same 2-core machine "
        f"(load average {load} at the end); the publish request took "
        f"{numbers['publish_seconds']:.2f} s (a 64 KiB instant update; times counted from "
        "sending it); server CPU from the publish to the last directive: "
        + ("not measured" if cpu is None else f"{cpu:.2f} s")
    )
    result.notes.append(
        f"bytes: one idle wake-up cycle is {idle_bytes} HTTP bytes, one heartbeat {heartbeat_bytes} "
        f"(measured here); per exchange {EXCHANGE_OVERHEAD_BYTES} bytes of TCP/IP and TLS framing; "
        f"per heartbeat a new connection and full TLS 1.3 handshake, ~{HEARTBEAT_CONNECTION_BYTES} bytes "
        f"(stated, not measured); {cycles:,.0f} cycles of a {DEFAULT_HOLD_SECONDS:.0f} s hold and "
        f"{heartbeats:,.0f} heartbeats in 30 days"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
