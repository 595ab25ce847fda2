"""Shared pieces of the javia benchmarks in ``bench/``.

Every ``bench_*.py`` script runs alone (``python bench/bench_heartbeat.py``),
prints a markdown table, and with ``--json PATH`` also writes its results for
``bench/run_all.py``, which rewrites ``docs/benchmarks.md``.

What is here: the machine description, medians and spreads, ``/proc``
readings (CPU seconds, resident memory), a real ``javia server`` process, the
``wrk`` load generator (Debian package ``wrk``) with a fallback httpx async
load generator when it is missing, and the result/table format.

All load goes to 127.0.0.1 only, and every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from javia_devtools.demo import LocalFleet, free_port
from javia_devtools.simulate import process_cpu_seconds, process_rss_bytes

__all__ = [
    "BenchResult",
    "LoadResult",
    "Row",
    "Summary",
    "httpx_load",
    "javia_server",
    "machine_description",
    "main_arguments",
    "peak_rss_sampler",
    "positive",
    "process_cpu_seconds",
    "process_memory_bytes",
    "process_rss_bytes",
    "run_load",
    "scratch_dir",
    "start_process",
    "summarize",
    "wait_for_http",
    "wrk_available",
]

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Median and spread (minimum, maximum) of repeated measurements."""

    median: float
    low: float
    high: float
    runs: int

    @property
    def spread_percent(self) -> float:
        """(max - min) / median, in percent; 0 for a single run."""
        return 0.0 if self.median == 0 else 100.0 * (self.high - self.low) / abs(self.median)

    def show(self, digits: int = 0, unit: str = "") -> str:
        """``median (min–max)`` rounded to ``digits`` decimals, with ``unit``."""
        suffix = f" {unit}" if unit else ""
        if self.runs == 1:
            return f"{self.median:,.{digits}f}{suffix}"
        return f"{self.median:,.{digits}f}{suffix} ({self.low:,.{digits}f}–{self.high:,.{digits}f})"


def summarize(values: Sequence[float]) -> Summary:
    """Median, minimum and maximum of ``values`` (at least one).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no measurements to summarize")
    return Summary(
        median=float(statistics.median(values)),
        low=float(min(values)),
        high=float(max(values)),
        runs=len(values),
    )


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        benchmark: what was measured, e.g. "heartbeats/s, no pending update".
        measured: the measurement, already formatted (``median (min–max) unit``).
        reference: the reference measured in the same run, formatted; "" if none.
        ratio: measured / reference as text (e.g. ``0.62 ×``); "" if none.
        target: the target from the issue, as text.
        met: whether the target is met; None if it could not be judged.
        values: raw numbers for later analysis (JSON only).
    """

    benchmark: str
    measured: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    """What one benchmark script produced."""

    name: str
    title: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        """The rows as a markdown table, then the notes as a list."""
        lines = [
            f"### {self.title}",
            "",
            f"`{self.command}` ({self.seconds:.0f} s)",
            "",
            "| benchmark | measured | reference | ratio | target | met |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            met = {True: "yes", False: "**no**", None: "n/a"}[row.met]
            lines.append(
                f"| {row.benchmark} | {row.measured} | {row.reference or '—'} | "
                f"{row.ratio or '—'} | {row.target or '—'} | {met} |"
            )
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def ratio_text(value: float, reference: float) -> str:
    """``value / reference`` as ``0.62 ×``."""
    if reference == 0:
        return "n/a"
    return f"{value / reference:.2f} ×"


def main_arguments(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse the common options of a benchmark script: ``--json PATH``, ``--runs N``, ``--seconds S``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--runs", type=positive(int), default=3, help="repetitions for medians and spreads"
    )
    parser.add_argument(
        "--seconds", type=positive(float), default=10.0, help="length of each load run"
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: directory {args.json.parent} does not exist")
    # SIGTERM (a time limit, a CI cancel) stops a benchmark like Ctrl-C: its
    # servers are stopped and its scratch directories removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    return args


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` accepting finite numbers above 0 of ``kind`` (int or float)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
        return value

    return parse


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def finish(result: BenchResult, args: argparse.Namespace, started: float) -> None:
    """Print the table and write the JSON file if asked."""
    result.seconds = time.perf_counter() - started
    print(result.markdown())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _tool_version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[0].strip() if text else None


def machine_description() -> dict[str, str]:
    """CPU, cores, memory, OS, Python and the versions of the server's stack and tools."""
    packages = {}
    for name in (
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlalchemy",
        "httpx",
        "pydantic",
        "h11",
        "httptools",
        "uvloop",
    ):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory_gib(),
        "os": f"{_os_name()}, Linux {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{name} {version}" for name, version in packages.items()),
        "wrk": _tool_version(["wrk", "--version"]) or "not installed",
        "nginx": _tool_version(["nginx", "-v"]) or "not installed",
    }


def process_memory_bytes(pid: int) -> dict[str, int] | None:
    """``rss``, ``anon`` (private) and ``file`` (mapped files, shared libraries) bytes of ``pid``.

    From ``/proc/PID/status`` (``VmRSS``, ``RssAnon``, ``RssFile``); None without it.
    """
    wanted = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key = line.split(None, 1)[0] if line.strip() else ""
                if key in wanted:
                    values[wanted[key]] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return values if "rss" in values else None


# --------------------------------------------------------------------------- processes


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"javia-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def javia_server(
    root: Path, *, heartbeat_seconds: float = 300.0, env: dict[str, str] | None = None
) -> Iterator[LocalFleet]:
    """A real ``javia server`` process on 127.0.0.1 (stopped afterwards), with a signing key."""
    fleet = LocalFleet(root, heartbeat_seconds=heartbeat_seconds)
    fleet.generate_key()
    try:
        fleet.start_server(extra_env=env, timeout=60)
        wait_for_workers(root / "server.log", int((env or {}).get("JAVIA_WORKERS", "1")))
        yield fleet
    finally:
        fleet.stop()


def wait_for_workers(log: Path, workers: int, timeout: float = 180.0) -> None:
    """Wait until every one of ``workers`` server processes has started (its log line).

    The health check answers as soon as the first worker serves; on a busy
    machine the others may take many seconds more, and a measurement taken
    meanwhile would be of fewer workers.
    """
    if workers <= 1:
        return
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Application startup complete") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} server workers did not all start within {timeout} s")
        time.sleep(0.2)


def start_process(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background with output to ``log``."""
    handle = log.open("ab")
    return subprocess.Popen(
        list(argv),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM ``process`` (one we started), then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers at all (any status).

    Raises:
        RuntimeError: no answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class peak_rss_sampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread.

    ``with peak_rss_sampler(pid) as sampler: ...`` then ``sampler.before`` and
    ``sampler.peak`` (bytes).
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.before = process_rss_bytes(pid) or 0
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = process_rss_bytes(self.pid)
            if rss is not None:
                self.peak = max(self.peak, rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = process_rss_bytes(self.pid)
        if rss is not None:
            self.peak = max(self.peak, rss)


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """One load run.

    Attributes:
        requests_per_second: completed requests per second.
        bytes_per_second: response bytes read per second (headers included for wrk).
        latency_ms: percentiles ``p50``, ``p90``, ``p99`` in milliseconds.
        errors: socket errors and non-2xx responses.
        generator: ``wrk`` or ``httpx``.
    """

    requests_per_second: float
    bytes_per_second: float
    latency_ms: dict[str, float]
    errors: int
    generator: str


def wrk_available() -> bool:
    """Whether the ``wrk`` load generator is installed (``apt-get install wrk``)."""
    return shutil.which("wrk") is not None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _parse_wrk(text: str) -> LoadResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    read = re.search(r"requests in ([\d.]+)(\w+), ([\d.]+)([KMGT]?B) read", text)
    if rps is None or read is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    seconds = float(read.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[read.group(2)]
    total_bytes = float(read.group(3)) * _SIZE[read.group(4)]
    latency = {}
    for percent, value, unit in re.findall(
        r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE
    ):
        latency[f"p{percent}"] = float(value) * _UNITS[unit]
    errors = 0
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(float(rps.group(1)), total_bytes / seconds, latency, errors, "wrk")


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(
    requests: Sequence[tuple[str, str, dict[str, str], str]], think_ms: float = 0.0
) -> str:
    """A wrk Lua script cycling through ``(method, path, headers, body)`` requests.

    With ``think_ms``, each connection pauses a random 0.5–1.5 × ``think_ms``
    milliseconds after every answer before it sends its next request (wrk's
    ``delay`` hook), like a device waiting for its next heartbeat.
    """
    entries = []
    for method, path, headers, body in requests:
        header_items = ", ".join(
            f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
        )
        entries.append(
            f"  wrk.format({_lua_string(method)}, {_lua_string(path)}, {{{header_items}}}, "
            f"{_lua_string(body) if body else 'nil'}),"
        )
    # Built in init(): wrk sets the Host header only once a thread starts.
    return (
        "local requests = {}\n"
        "init = function(args)\n"
        "  requests = {\n" + "\n".join(entries) + "\n  }\n"
        "end\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  return requests[(i % #requests) + 1]\n"
        "end\n"
        + (
            f"delay = function()\n  return math.random({think_ms * 0.5:.0f}, {think_ms * 1.5:.0f})\nend\n"
            if think_ms > 0
            else ""
        )
    )


def _wrk(
    url: str,
    requests: Sequence[tuple[str, str, dict[str, str], str]],
    *,
    connections: int,
    seconds: float,
    threads: int,
    timeout_seconds: float,
    think_ms: float,
) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(wrk_script(requests, think_ms))
        script = handle.name
    try:
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            f"--timeout={timeout_seconds:g}s",
            "--latency",
            "-s",
            script,
            url,
        ]
        result = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds + timeout_seconds + 60,
        )
    finally:
        os.unlink(script)
    return _parse_wrk(result.stdout + result.stderr)


async def _httpx_load_async(
    url: str,
    requests: Sequence[tuple[str, str, dict[str, str], str]],
    *,
    connections: int,
    seconds: float,
    timeout_seconds: float,
    think_ms: float = 0.0,
) -> LoadResult:
    latencies: list[float] = []
    rng = random.Random(0)
    counters = {"requests": 0, "bytes": 0, "errors": 0}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # Made before the clock starts: each client builds a TLS context (tens of
    # milliseconds), which on a busy machine would eat much of a short run.
    clients = [
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_seconds)
        for _ in range(connections)
    ]
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        async with clients[index] as client:
            turn = index
            while time.perf_counter() < deadline:
                method, path, headers, body = requests[turn % len(requests)]
                turn += connections
                started = time.perf_counter()
                try:
                    async with client.stream(
                        method, path, headers=headers, content=body or None
                    ) as response:
                        size = 0
                        async for chunk in response.aiter_raw(1024 * 1024):
                            size += len(chunk)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok, size = False, 0
                latencies.append((time.perf_counter() - started) * 1000)
                counters["requests"] += 1
                counters["bytes"] += size
                counters["errors"] += 0 if ok else 1
                if think_ms > 0:
                    pause = rng.uniform(0.5, 1.5) * think_ms / 1000
                    await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())))

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    latency = {
        f"p{p}": ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] for p in (50, 90, 99)
    }
    return LoadResult(
        counters["requests"] / elapsed,
        counters["bytes"] / elapsed,
        latency,
        counters["errors"],
        "httpx",
    )


def httpx_load(
    url: str,
    requests: Sequence[tuple[str, str, dict[str, str], str]],
    *,
    connections: int,
    seconds: float,
    timeout_seconds: float = 60.0,
    think_ms: float = 0.0,
) -> LoadResult:
    """The fallback load generator: ``connections`` asyncio workers with httpx, one connection each."""
    return asyncio.run(
        _httpx_load_async(
            url,
            requests,
            connections=connections,
            seconds=seconds,
            timeout_seconds=timeout_seconds,
            think_ms=think_ms,
        )
    )


def run_load(
    url: str,
    requests: Sequence[tuple[str, str, dict[str, str], str]],
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_seconds: float = 10.0,
    think_ms: float = 0.0,
) -> LoadResult:
    """Closed-loop load on ``url``: wrk if installed, else the httpx fallback.

    Args:
        url: base URL on 127.0.0.1.
        requests: ``(method, path, headers, body)`` cycled through in order.
        connections: concurrent connections (each sends its next request when
            the previous answer arrived).
        seconds: how long the run lasts.
        threads: wrk threads.
        timeout_seconds: a request slower than this counts as an error.
        think_ms: mean pause of each connection after an answer (random
            0.5–1.5 × this), in milliseconds; 0 for none (saturation).
    """
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"load runs target loopback only, not {url}")
    if wrk_available():
        return _wrk(
            url,
            requests,
            connections=connections,
            seconds=seconds,
            threads=threads,
            timeout_seconds=timeout_seconds,
            think_ms=think_ms,
        )
    return httpx_load(
        url,
        requests,
        connections=connections,
        seconds=seconds,
        timeout_seconds=timeout_seconds,
        think_ms=think_ms,
    )


def register_devices(
    url: str, api_key: str, count: int, *, current_version: str | None = None
) -> list[tuple[str, str]]:
    """Register ``count`` devices through the admin API; returns ``(uuid, token)`` pairs.

    With ``current_version``, each device then sends one heartbeat reporting it.
    """
    devices = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for index in range(count):
            response = client.post(
                "/api/v1/devices/register",
                headers={"X-API-Key": api_key},
                json={"device_name": f"bench-{index:05d}"},
            )
            response.raise_for_status()
            body = response.json()
            devices.append((body["device_uuid"], body["device_token"]))
            if current_version is not None:
                client.post(
                    f"/api/v1/devices/{body['device_uuid']}/heartbeat",
                    headers={"Authorization": f"Bearer {body['device_token']}"},
                    json={"current_version": current_version},
                ).raise_for_status()
    return devices


def python_command() -> list[str]:
    """This interpreter."""
    return [sys.executable]


__all__ += [
    "MIB",
    "REPO",
    "finish",
    "free_port",
    "python_command",
    "ratio_text",
    "register_devices",
    "stop_process",
    "wrk_script",
]
