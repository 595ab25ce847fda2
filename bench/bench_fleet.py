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

Run alone: ``python bench/bench_fleet.py [--devices 10000] [--heartbeat-seconds 30]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import MIB, BenchResult, Row
from javia_devtools.simulate import SimulationConfig, SimulationError, run_simulation


def main() -> None:
    """Simulate, print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=int, default=10_000)
        parser.add_argument("--heartbeat-seconds", type=float, default=30.0)
        parser.add_argument("--connections", type=int, default=64)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="fleet",
        title=f"Fleet simulator: {args.devices:,} devices, instant update",
        command=(
            f"python bench/bench_fleet.py --devices {args.devices} "
            f"--heartbeat-seconds {args.heartbeat_seconds:g}"
        ),
    )
    try:
        config = SimulationConfig(
            devices=args.devices,
            heartbeat_seconds=args.heartbeat_seconds,
            connections=args.connections,
            timeout_seconds=360,
            seed=7,
        )
        report = run_simulation(config, progress=lambda line: print(f"  {line}", file=sys.stderr))
    except SimulationError as error:
        sys.exit(f"error: {error}")
    values = report.to_dict()
    done = report.seconds_to_all_completed
    result.rows.append(
        Row(
            "publish → all devices completed",
            "not reached" if done is None else f"{done:.1f} s",
            target="all complete",
            met=report.completed == report.devices and report.server_completed == report.devices,
            values=values,
        )
    )
    result.rows.append(
        Row(
            "errors (failed requests and verifications)",
            str(report.error_count)
            + (
                ""
                if not report.errors
                else " — " + ", ".join(f"{k}: {v}" for k, v in report.errors.items())
            ),
            target="0",
            met=report.error_count == 0,
        )
    )
    completion = report.completion_percentiles
    result.rows.append(
        Row(
            "per-device time to completed, p50 / p90 / p99",
            " / ".join(
                f"{completion.get(name, float('nan')):.1f} s" for name in ("p50", "p90", "p99")
            ),
        )
    )
    cpu = report.server_cpu_seconds
    result.rows.append(
        Row(
            "server CPU during the rollout",
            "unknown"
            if cpu is None
            else f"{cpu:.1f} s ({report.server_cpu_percent:.0f} % of one core)",
        )
    )
    if report.simulator_cpu_seconds is not None:
        result.rows.append(
            Row("simulator CPU over the same time", f"{report.simulator_cpu_seconds:.1f} s")
        )
    latency = report.heartbeat_latency_ms
    result.rows.append(
        Row(
            "heartbeat round trip p50 / p99 (whole run)",
            f"{latency.get('p50', float('nan')):.1f} ms / {latency.get('p99', float('nan')):.1f} ms",
        )
    )
    result.rows.append(
        Row(
            "registration through the admin API",
            f"{report.register_seconds:.1f} s ({args.devices / report.register_seconds:,.0f} devices/s)",
        )
    )
    result.rows.append(Row("publish request", f"{report.publish_seconds:.2f} s"))
    if report.server_rss_bytes is not None:
        result.rows.append(Row("server RSS at the end", f"{report.server_rss_bytes / MIB:.0f} MiB"))
    requests = sum(report.requests.values())
    result.notes.append(
        f"heartbeat interval {args.heartbeat_seconds:g} s (± 10 % jitter), {args.connections} HTTP connections "
        f"shared by all simulated devices, payload {config.payload_bytes // 1024} KiB; "
        f"{requests:,} requests in all ({', '.join(f'{k} {v:,}' for k, v in sorted(report.requests.items()))}); "
        f"simulator and server share the machine's cores; wall time {report.wall_seconds:.0f} s"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
