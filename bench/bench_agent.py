"""Agent idle memory and CPU per heartbeat: the real ``javia agent run`` process.

Set-up: a real ``javia server`` telling devices to heartbeat every second,
one device registered with ``javia agent register`` and provisioned with
``javia agent install`` (its example application runs beside the agent), then
``javia agent run``. After a warm-up, ``--runs`` windows of ``--seconds``
each: the agent's CPU time (user + system, from ``/proc``) divided by the
heartbeats it sent in the window (counted from its ``heartbeat.json``, which
it rewrites on every answer), and its resident memory at the window's end.
No update is pending, so this is the cost a device pays all day.

Targets (issue 7): idle RSS ≤ 40 MB; ≤ 20 ms CPU per heartbeat.

Run alone: ``python bench/bench_agent.py [--runs 3] [--seconds 10]``.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import MIB, BenchResult, Row, summarize
from javia_devtools.demo import FleetDevice, LocalFleet, example_app_dir

WARM_UP_SECONDS = 5.0


class HeartbeatCounter:
    """Counts rewrites of the agent's ``heartbeat.json`` by polling its mtime every 20 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._last: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                stamp = self.path.stat().st_mtime_ns
            except OSError:
                continue
            if stamp != self._last:
                if self._last is not None:
                    self.count += 1
                self._last = stamp

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class AgentWindow:
    """One measuring window of a running agent.

    Attributes:
        cpu_ms_per_heartbeat: the agent's CPU time (user + system) in the
            window divided by the heartbeats it sent in it, in milliseconds.
        rss_mib: resident memory at the window's end, MiB.
        private_mib: its private part (RssAnon), MiB.
        heartbeats: heartbeats sent in the window.
    """

    cpu_ms_per_heartbeat: float
    rss_mib: float
    private_mib: float
    heartbeats: int


@dataclass
class IdleAgent:
    """A running ``javia agent run`` process with no pending update, and its heartbeat counter."""

    device: FleetDevice
    counter: HeartbeatCounter

    @property
    def pid(self) -> int:
        """The agent's process id."""
        assert self.device.agent is not None
        return self.device.agent.pid

    def window_start(self) -> tuple[float | None, int]:
        """CPU seconds and heartbeat count now, for :meth:`window_end`."""
        return benchlib.process_cpu_seconds(self.pid), self.counter.count

    def window_end(self, start: tuple[float | None, int]) -> AgentWindow:
        """The window since ``start`` (from :meth:`window_start`).

        Raises:
            RuntimeError: the agent exited or sent no heartbeat in the window
                (the message holds its log's tail).
        """
        cpu_before, count_before = start
        cpu_after = benchlib.process_cpu_seconds(self.pid)
        count = self.counter.count - count_before
        memory = benchlib.process_memory_bytes(self.pid)
        if cpu_before is None or cpu_after is None or memory is None or count == 0:
            raise RuntimeError(
                "the agent stopped or sent no heartbeat; log:\n"
                + self.device.agent_log.read_text()[-2000:]
            )
        return AgentWindow(
            cpu_ms_per_heartbeat=1000 * (cpu_after - cpu_before) / count,
            rss_mib=memory["rss"] / MIB,
            private_mib=memory.get("anon", 0) / MIB,
            heartbeats=count,
        )


@contextmanager
def idle_agent(root: Path, **fleet_options: Any) -> Iterator[IdleAgent]:
    """A server telling devices to heartbeat every second and one provisioned device's agent.

    The device is registered with ``javia agent register``, its first release
    (the example application) installed with ``javia agent install``, then
    ``javia agent run`` starts. ``fleet_options`` go to :class:`LocalFleet`
    (e.g. another checkout's ``command``, ``server_command`` and ``env``).
    Everything is stopped on the way out.
    """
    fleet = LocalFleet(root, heartbeat_seconds=1.0, health_seconds=1.0, **fleet_options)
    fleet.generate_key()
    try:
        fleet.start_server(timeout=60)
        app_dir = root / "app"
        shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        package = fleet.build_package(app_dir, "v1.0.0", "scheduled", root / "package")
        device = fleet.add_device("pi-bench", "Europe/Berlin", initial_package=package)
        fleet.start_agent(device)
        counter = HeartbeatCounter(device.state_dir / "heartbeat.json")
        counter.start()
        try:
            yield IdleAgent(device, counter)
        finally:
            counter.stop()
    finally:
        fleet.stop()


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    result = BenchResult(
        name="agent",
        title="Agent idle memory and heartbeat cost (1 s heartbeat)",
        command="python bench/bench_agent.py",
    )
    windows: list[AgentWindow] = []
    with benchlib.scratch_dir("agent") as root, idle_agent(root) as agent:
        time.sleep(WARM_UP_SECONDS)
        for _ in range(args.runs):
            start = agent.window_start()
            time.sleep(args.seconds)
            windows.append(agent.window_end(start))
    cpu_ms = [window.cpu_ms_per_heartbeat for window in windows]
    rss_mib = [window.rss_mib for window in windows]
    private_mib = [window.private_mib for window in windows]
    beats = [window.heartbeats for window in windows]

    rss = summarize(rss_mib)
    cpu = summarize(cpu_ms)
    private = summarize(private_mib)
    values = {
        "rss_mib": rss_mib,
        "private_mib": private_mib,
        "cpu_ms_per_heartbeat": cpu_ms,
        "heartbeats_per_window": beats,
    }
    result.rows.append(
        Row(
            "agent idle RSS",
            f"{rss.show(1, 'MiB')}, of which private {private.show(1, 'MiB')}",
            target="≤ 40 MB",
            met=rss.high * MIB <= 40 * 1000 * 1000,
            values=values,
        )
    )
    result.rows.append(
        Row(
            "agent CPU per heartbeat",
            cpu.show(2, "ms"),
            target="≤ 20 ms",
            met=cpu.high <= 20,
            values=values,
        )
    )
    result.notes.append(
        f"{args.runs} windows of {args.seconds:g} s after a {WARM_UP_SECONDS:g} s warm-up; "
        f"{sum(beats)} heartbeats in all; CPU includes everything the agent does between heartbeats "
        "(read from /proc in 10 ms clock ticks); private = RssAnon, the rest of RSS is mapped "
        "files (shared libraries such as libcrypto, pydantic-core), shared with other processes"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
