"""Application downtime during an update: stop → switch → start, with real processes.

The agent does everything slow *before* it stops the application: download,
signature and hash checks, unpacking into ``releases/<version>``, the Python
environment and apt packages (DESIGN.md section 7). The application is down
only while the agent stops it, replaces the ``current`` link and starts it
again. This script measures that gap on this machine:

- a real :class:`javia_agent.installer.Installer` installs ``--updates``
  successive releases from signed package directories (each with a
  ``--payload-mib`` incompressible file, so staging has real work to do);
- the application is a real Python process started by the agent's
  :class:`~javia_agent.services.CommandService` (command mode, as in the demo;
  a systemd unit adds systemd's own start cost); it exits at once on SIGTERM
  and records ``time.monotonic()`` when it is ready (CLOCK_MONOTONIC is one
  clock for every process on Linux);
- the reference is a plain restart of the same application without an update
  (stop, start, ready), measured right after each update under the same
  conditions: the floor any restart-based update has to pay. What the update
  adds to it is the switch, measured on its own.

Reported per update (median, min–max): the whole gap from "stop" to "new
release ready", its parts (stop, switch, start of the new process until it
is ready), and the staging time that ran before the stop.

Run alone: ``python bench/bench_downtime.py [--updates 20] [--payload-mib 8]``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import BenchResult, Row, summarize  # noqa: E402
from javia_agent.clock import Clock  # noqa: E402
from javia_agent.config import AgentPaths  # noqa: E402
from javia_agent.installer import Installer, InstallResult  # noqa: E402
from javia_agent.services import CommandService  # noqa: E402
from javia_core.keys import load_keyring  # noqa: E402
from javia_core.models import UpdateType  # noqa: E402
from javia_core.versioning import Version  # noqa: E402
from javia_updates.keys import generate_keypair, load_private_key  # noqa: E402
from javia_updates.packaging import BuiltPackage, build_package  # noqa: E402

#: The measured application: ready = status file written; exits on SIGTERM at once.
APP_SOURCE = """\
import json, os, signal, sys, time
from pathlib import Path

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
version = Path("VERSION").read_text().strip()
status = os.environ["BENCH_APP_STATUS"]
record = {"version": version, "pid": os.getpid(), "ready_monotonic": time.monotonic()}
Path(status + ".tmp").write_text(json.dumps(record))
os.replace(status + ".tmp", status)
while True:
    signal.pause()
"""


@dataclass
class TimedService:
    """The real service, with the instants the installer called it (monotonic seconds)."""

    inner: CommandService
    marks: dict[str, float] = field(default_factory=dict)

    def stop(self) -> None:
        self.marks["stop_called"] = time.monotonic()
        self.inner.stop()
        self.marks["stopped"] = time.monotonic()

    def start(self) -> None:
        self.marks["start_called"] = time.monotonic()
        self.inner.start()
        self.marks["started"] = time.monotonic()

    def is_active(self) -> bool:
        return self.inner.is_active()


def wait_ready(status_file: Path, pid: int | None, timeout: float = 30.0) -> float:
    """The ``ready_monotonic`` the process ``pid`` recorded; waits for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(status_file.read_text())
        except (OSError, ValueError):
            record = None
        if record and record["pid"] == pid:
            return float(record["ready_monotonic"])
        time.sleep(0.005)
    raise RuntimeError(f"the application (pid {pid}) did not become ready within {timeout} s")


def build_packages(root: Path, count: int, payload_bytes: int) -> list[BuiltPackage]:
    """``count`` signed releases v1.0.0, v1.1.0, … of the measured application."""
    pair = generate_keypair(root / "key", name="bench")
    private_key = load_private_key(pair.private_path)
    blob = random.Random(7).randbytes(payload_bytes)
    packages = []
    for index in range(count):
        version = f"v1.{index}.0"
        source = root / "source" / version
        source.mkdir(parents=True)
        (source / "app.py").write_text(APP_SOURCE)
        (source / "VERSION").write_text(version + "\n")
        (source / "model.bin").write_bytes(blob[index:] + blob[:index])
        packages.append(
            build_package(
                source,
                root / "packages" / version,
                version=Version.parse(version),
                update_type=UpdateType.INSTANT,
                description="downtime benchmark",
                system_packages=(),
                private_key=private_key,
                now=datetime.now(UTC),
                app_name="assistant",
                write_version_file=False,
            )
        )
    (root / "keyring").mkdir()
    (root / "keyring" / "bench.pub").write_bytes(pair.public_path.read_bytes())
    return packages


def main() -> None:
    """Measure, print the table, write JSON if asked."""

    def options(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--updates", type=int, default=20, help="updates measured")
        parser.add_argument("--payload-mib", type=float, default=8.0, help="payload size")
        parser.add_argument("--health-seconds", type=float, default=0.3)

    args = benchlib.main_arguments(__doc__.splitlines()[0], options)
    started = time.perf_counter()
    result = BenchResult(
        name="downtime",
        title="Application downtime during an update (stop → switch → start)",
        command="python bench/bench_downtime.py",
    )
    gaps: dict[str, list[float]] = {"total": [], "stop": [], "switch": [], "start": [], "stage": []}
    restarts: list[float] = []
    with benchlib.scratch_dir("downtime") as root:
        payload_bytes = int(args.payload_mib * 1024 * 1024)
        packages = build_packages(root, args.updates + 1, payload_bytes)
        paths = AgentPaths(
            install_root=root / "device" / "opt",
            state_dir=root / "device" / "var",
            activity_file=root / "device" / "var" / "activity.json",
        )
        status_file = root / "device" / "app-status.json"
        service = CommandService(
            [sys.executable, "app.py"],
            current_link=paths.current_link,
            pid_file=paths.pid_file,
            log_file=paths.app_log,
            activity_file=paths.activity_file,
            app_env={"BENCH_APP_STATUS": str(status_file)},
        )
        timed = TimedService(service)
        installer = Installer(
            paths=paths,
            service=timed,
            keyring=lambda: load_keyring(root / "keyring"),
            clock=Clock(),
            health_seconds=args.health_seconds,
            health_poll_seconds=0.02,
        )
        try:
            first = installer.install_from_directory(packages[0].directory)
            if first.result != InstallResult.COMPLETED:
                raise RuntimeError(f"first install: {first}")
            wait_ready(status_file, service.pid())
            for package in packages[1:]:
                timed.marks.clear()
                began = time.monotonic()
                outcome = installer.install_from_directory(package.directory)
                if outcome.result != InstallResult.COMPLETED:
                    raise RuntimeError(f"install of {package.manifest.version}: {outcome}")
                ready = wait_ready(status_file, service.pid())
                marks = timed.marks
                gaps["total"].append(ready - marks["stop_called"])
                gaps["stop"].append(marks["stopped"] - marks["stop_called"])
                gaps["switch"].append(marks["start_called"] - marks["stopped"])
                gaps["start"].append(ready - marks["start_called"])
                gaps["stage"].append(marks["stop_called"] - began)
                # The reference, right after, under the same conditions: a plain restart.
                began = time.monotonic()
                service.stop()
                service.start()
                restarts.append(wait_ready(status_file, service.pid()) - began)
        finally:
            service.stop()

    ms = [1000 * value for value in gaps["total"]]
    reference = summarize([1000 * value for value in restarts])
    total = summarize(ms)
    switch = summarize([1000 * value for value in gaps["switch"]])
    result.rows.append(
        Row(
            "downtime per update: stop → switch → start → new release ready",
            total.show(1, "ms"),
            reference=f"plain restart {reference.show(1, 'ms')}",
            ratio=f"{total.median / reference.median:.2f} ×" if reference.median else "n/a",
            target="a restart plus the switch only (switch < 10 ms)",
            met=switch.median < 10.0,
            values={"total_ms": ms, "restart_ms": [1000 * v for v in restarts]},
        )
    )
    for key, label in (
        ("stop", "  stop: SIGTERM until the old release has exited"),
        ("switch", "  switch: `current` replaced, directory fsynced"),
        ("start", "  start: new process spawned until it is ready"),
    ):
        values = [1000 * value for value in gaps[key]]
        result.rows.append(
            Row(label, summarize(values).show(2, "ms"), values={f"{key}_ms": values})
        )
    stage = [1000 * value for value in gaps["stage"]]
    result.rows.append(
        Row(
            f"staging before the stop (verify + unpack {args.payload_mib:g} MiB): not downtime",
            summarize(stage).show(0, "ms"),
            values={"stage_ms": stage},
        )
    )
    result.notes.append(
        f"{args.updates} updates in a row by the agent's Installer (package directories, "
        "command mode), median (min–max); the application is a minimal Python process "
        "that exits at once on SIGTERM, so the stop and start parts are mostly interpreter "
        "exit and start-up: a real application adds its own shutdown and start time to both "
        "columns alike"
    )
    result.notes.append(
        "the health window after the start is not downtime (the new release is serving) and "
        "is excluded; a release that fails it costs a second gap of the same size for the "
        "rollback"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
