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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import MIB, BenchResult, Row, summarize
from javia_devtools.demo import LocalFleet, example_app_dir

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


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    result = BenchResult(
        name="agent",
        title="Agent idle memory and heartbeat cost (1 s heartbeat)",
        command="python bench/bench_agent.py",
    )
    cpu_ms: list[float] = []
    rss_mib: list[float] = []
    private_mib: list[float] = []
    beats: list[int] = []
    with benchlib.scratch_dir("agent") as root:
        fleet = LocalFleet(root, heartbeat_seconds=1.0, health_seconds=1.0)
        fleet.generate_key()
        try:
            fleet.start_server(timeout=60)
            app_dir = root / "app"
            shutil.copytree(
                example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__")
            )
            package = fleet.build_package(app_dir, "v1.0.0", "scheduled", root / "package")
            device = fleet.add_device("pi-bench", "Europe/Berlin", initial_package=package)
            fleet.start_agent(device)
            assert device.agent is not None
            pid = device.agent.pid
            counter = HeartbeatCounter(device.state_dir / "heartbeat.json")
            counter.start()
            time.sleep(WARM_UP_SECONDS)
            try:
                for _ in range(args.runs):
                    cpu_before = benchlib.process_cpu_seconds(pid)
                    count_before = counter.count
                    time.sleep(args.seconds)
                    cpu_after = benchlib.process_cpu_seconds(pid)
                    count = counter.count - count_before
                    memory = benchlib.process_memory_bytes(pid)
                    if cpu_before is None or cpu_after is None or memory is None or count == 0:
                        raise RuntimeError(
                            f"the agent stopped or sent no heartbeat; log:\n{device.agent_log.read_text()[-2000:]}"
                        )
                    cpu_ms.append(1000 * (cpu_after - cpu_before) / count)
                    rss_mib.append(memory["rss"] / MIB)
                    private_mib.append(memory.get("anon", 0) / MIB)
                    beats.append(count)
            finally:
                counter.stop()
        finally:
            fleet.stop()

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
