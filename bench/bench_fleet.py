"""Fleet simulator: 10,000 simulated devices install an instant update from a real server.

Runs :func:`javia_devtools.simulate.run_simulation` (what ``javia simulate``
runs): a real ``javia server`` (local backend), devices registered through
the admin API, each device an asyncio task in this process speaking the real
device API over HTTP with an accelerated heartbeat; once all are online an
instant update is published and every device downloads, verifies and reports
``downloading`` → ``installing`` → ``completed``.

Expected (issue 7): every device completes, zero errors. Reported: time from
the publish answer until the last device completed, the server's CPU during
the rollout, heartbeat latency.

The same simulation runs three times in one go, side by side (issue 14, "Use
the whole machine"): the server as one process (``--workers 1``), then with
``--workers N`` (default: the machine's cores), then with N workers and
install admission off (``install_admission_requests = 0``: every device
begins at once, the server before install admission) as the reference;
target with workers: heartbeat p99 ≤ 1 s. ``--workers 1`` runs the
single-process server alone.

Run alone: ``python bench/bench_fleet.py [--devices 10000] [--heartbeat-seconds 30] [--workers N]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import MIB, BenchResult, Row
from javia_devtools.simulate import (
    SimulationConfig,
    SimulationError,
    SimulationReport,
    run_simulation,
)
from javia_updates.settings import available_cores

#: Target of issue 14 for the heartbeat round trip with workers, p99, milliseconds.
HEARTBEAT_P99_TARGET_MS = 1000.0


#: The server settings of the reference run: install admission off.
WITHOUT_ADMISSION = {"JAVIA_INSTALL_ADMISSION_REQUESTS": "0"}


def simulate(args, workers: int, settings: dict[str, str] | None = None) -> SimulationReport:  # type: ignore[no-untyped-def]
    """One simulation against a server of ``workers`` processes (``settings``: its extra ones)."""
    config = SimulationConfig(
        devices=args.devices,
        heartbeat_seconds=args.heartbeat_seconds,
        connections=args.connections,
        timeout_seconds=600,
        seed=7,
        server_workers=workers,
        server_settings=settings,
    )
    say = f"[{workers} worker{'s' if workers > 1 else ''}{', no admission' if settings else ''}]"
    try:
        return run_simulation(
            config, progress=lambda line: print(f"  {say} {line}", file=sys.stderr)
        )
    except SimulationError as error:
        sys.exit(f"error: {error}")


def rows(report: SimulationReport, label: str, args) -> list[Row]:  # type: ignore[no-untyped-def]
    """The table rows of one simulation; ``label`` says which server ("" for one process)."""
    values = report.to_dict()
    done = report.seconds_to_all_completed
    found = [
        Row(
            f"publish → all devices completed{label}",
            "not reached" if done is None else f"{done:.1f} s",
            target="all complete",
            met=report.completed == report.devices and report.server_completed == report.devices,
            values=values,
        ),
        Row(
            f"errors (failed requests and verifications){label}",
            str(report.error_count)
            + (
                ""
                if not report.errors
                else " — " + ", ".join(f"{k}: {v}" for k, v in report.errors.items())
            ),
            target="0",
            met=report.error_count == 0,
        ),
    ]
    completion = report.completion_percentiles
    found.append(
        Row(
            f"per-device time to completed, p50 / p90 / p99{label}",
            " / ".join(
                f"{completion.get(name, float('nan')):.1f} s" for name in ("p50", "p90", "p99")
            ),
        )
    )
    cpu = report.server_cpu_seconds
    found.append(
        Row(
            f"server CPU during the rollout{label}",
            "unknown"
            if cpu is None
            else f"{cpu:.1f} s ({report.server_cpu_percent:.0f} % of one core)",
        )
    )
    if report.simulator_cpu_seconds is not None:
        found.append(
            Row(f"simulator CPU over the same time{label}", f"{report.simulator_cpu_seconds:.1f} s")
        )
    latency = report.heartbeat_latency_ms
    found.append(
        Row(
            f"heartbeat round trip p50 / p99 (whole run){label}",
            f"{latency.get('p50', float('nan')):.1f} ms / {latency.get('p99', float('nan')):.1f} ms",
        )
    )
    found.append(
        Row(
            f"registration through the admin API{label}",
            f"{report.register_seconds:.1f} s ({args.devices / report.register_seconds:,.0f} devices/s)",
        )
    )
    found.append(Row(f"publish request{label}", f"{report.publish_seconds:.2f} s"))
    found.append(
        Row(
            f"heartbeat answers that deferred an install (install admission){label}",
            "unknown" if report.installs_deferred is None else f"{report.installs_deferred:,}",
        )
    )
    if report.server_rss_bytes is not None:
        found.append(
            Row(f"server RSS at the end{label}", f"{report.server_rss_bytes / MIB:.0f} MiB")
        )
    return found


def main() -> None:
    """Simulate (one process, then workers), print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=int, default=10_000)
        parser.add_argument("--heartbeat-seconds", type=float, default=30.0)
        parser.add_argument("--connections", type=int, default=64)
        parser.add_argument(
            "--workers",
            type=int,
            default=max(2, available_cores()),
            help="server processes of the second run (1: only the single-process run)",
        )

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="fleet",
        title=f"Fleet simulator: {args.devices:,} devices, instant update",
        command=(
            f"python bench/bench_fleet.py --devices {args.devices} "
            f"--heartbeat-seconds {args.heartbeat_seconds:g} --workers {args.workers}"
        ),
    )
    single = simulate(args, 1)
    result.rows.extend(rows(single, "", args))
    reports = [single]
    if args.workers > 1:
        workers = simulate(args, args.workers)
        reports.append(workers)
        label = f", {args.workers} workers"
        result.rows.extend(rows(workers, label, args))
        p99 = workers.heartbeat_latency_ms.get("p99", float("nan"))
        p99_single = single.heartbeat_latency_ms.get("p99", float("nan"))
        done, done_single = workers.seconds_to_all_completed, single.seconds_to_all_completed
        result.rows.append(
            Row(
                f"heartbeat round trip p99 with {args.workers} workers vs one process",
                f"{p99:.1f} ms",
                reference=f"{p99_single:.1f} ms",
                ratio=f"{p99 / p99_single:.2f} ×" if p99_single else "",
                target="≤ 1 s",
                met=p99 <= HEARTBEAT_P99_TARGET_MS and workers.error_count == 0,
            )
        )
        if done is not None and done_single is not None:
            result.rows.append(
                Row(
                    f"publish → all devices completed with {args.workers} workers vs one process",
                    f"{done:.1f} s",
                    reference=f"{done_single:.1f} s",
                    ratio=f"{done / done_single:.2f} ×",
                )
            )
        unpaced = simulate(args, args.workers, WITHOUT_ADMISSION)
        reports.append(unpaced)
        result.rows.extend(rows(unpaced, f"{label}, install admission off", args))
        p99_unpaced = unpaced.heartbeat_latency_ms.get("p99", float("nan"))
        result.rows.append(
            Row(
                f"heartbeat round trip p99 with {args.workers} workers: install admission vs none",
                f"{p99:.1f} ms",
                reference=f"{p99_unpaced:.1f} ms",
                ratio=f"{p99 / p99_unpaced:.2f} ×" if p99_unpaced else "",
            )
        )
        done_unpaced = unpaced.seconds_to_all_completed
        if done is not None and done_unpaced is not None:
            result.rows.append(
                Row(
                    f"publish → all devices completed with {args.workers} workers: "
                    "install admission vs none",
                    f"{done:.1f} s",
                    reference=f"{done_unpaced:.1f} s",
                    ratio=f"{done / done_unpaced:.2f} ×",
                )
            )
    for report, who in zip(
        reports,
        (
            "one server process",
            f"{args.workers} workers",
            f"{args.workers} workers, install admission off",
        ),
        strict=False,
    ):
        requests = sum(report.requests.values())
        result.notes.append(
            f"{who}: {requests:,} requests in all "
            f"({', '.join(f'{k} {v:,}' for k, v in sorted(report.requests.items()))}); "
            f"wall time {report.wall_seconds:.0f} s"
        )
    result.notes.append(
        f"heartbeat interval {args.heartbeat_seconds:g} s (± 10 % jitter), {args.connections} HTTP "
        f"connections shared by all simulated devices, payload 64 KiB; the runs one after the "
        "other, each with its own server and database; simulator and server share the machine's "
        "cores (with workers, the server's CPU is the sum over its processes)"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
