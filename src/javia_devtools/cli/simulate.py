"""``javia simulate``: a fleet of lightweight simulated devices against a real server.

See :mod:`javia_devtools.simulate` for what is simulated and measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from javia_updates.cli.common import console, error_console, fail, friendly_errors, markup_safe


def simulate(
    devices: int = typer.Option(100, "--devices", "-n", min=1, help="Simulated devices."),
    heartbeat_seconds: float = typer.Option(
        5.0,
        "--heartbeat-seconds",
        help="Accelerated heartbeat interval the server tells devices (seconds, at least 1 in effect).",
    ),
    connections: int = typer.Option(
        64, "--connections", min=1, help="HTTP connections shared by all devices."
    ),
    payload_bytes: int = typer.Option(
        64 * 1024,
        "--payload-bytes",
        min=0,
        help="Size of the published payload's data file (bytes).",
    ),
    timeout_seconds: float = typer.Option(
        300.0, "--timeout", help="Give up waiting for the fleet after this many seconds."
    ),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        help="SQLAlchemy URL of the server's database (default: SQLite in the scratch directory).",
    ),
    work_dir: Path | None = typer.Option(
        None,
        "--work-dir",
        help="Keep the server's data and logs here (default: a removed temp dir).",
    ),
    fail_rate: float = typer.Option(
        0.0,
        "--fail-rate",
        help="Fraction of installs that report failed (0.005 = 0.5 %).",
    ),
    fail_all: bool = typer.Option(False, "--fail-all", help="Every install reports failed."),
    crash_after_seconds: float | None = typer.Option(
        None,
        "--crash-after-seconds",
        help="The app crashes this many seconds after a completed install (heartbeats report restarts).",
    ),
    server_workers: int = typer.Option(
        1,
        "--server-workers",
        min=1,
        max=256,
        help="The server's worker processes (javia server --workers).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Simulate N devices over real HTTP: heartbeat, install an instant update, report.

    Starts a real javia server on 127.0.0.1, registers the devices through the
    admin API, publishes a signed instant update once all are online, and
    reports how long until all had reported completed, error counts and the
    server's CPU. Exits 1 unless every device completed without an error.
    """
    try:
        from javia_devtools.simulate import SimulationConfig, run_simulation
    except ImportError as error:
        fail(
            "the simulator needs the server and sim extras: "
            f"pip install 'javia[server,sim]' ({error.name} missing)"
        )

    with friendly_errors():
        config = SimulationConfig(
            devices=devices,
            heartbeat_seconds=heartbeat_seconds,
            connections=connections,
            payload_bytes=payload_bytes,
            timeout_seconds=timeout_seconds,
            database_url=database_url,
            server_workers=server_workers,
            work_dir=work_dir,
            fail_rate=fail_rate,
            fail_all=fail_all,
            crash_after_seconds=crash_after_seconds,
        )
        progress = (
            None
            if as_json
            else (lambda line: error_console.print(f"[dim]{markup_safe(line)}[/dim]"))
        )
        report = run_simulation(config, progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if not report.succeeded:
        timed_out = (
            f"timed out after --timeout {timeout_seconds:g} s: "
            if report.seconds_to_all_completed is None
            else ""
        )
        fail(
            f"{timed_out}{report.completed} of {report.devices} devices completed "
            f"(server counts {report.server_completed}), {report.error_count} errors"
        )


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title=f"Fleet simulation: {report.devices} devices", show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    all_done = report.seconds_to_all_completed
    rows = [
        ("heartbeat interval", f"{report.heartbeat_seconds:g} s"),
        ("registration (admin API)", f"{report.register_seconds:.2f} s"),
        ("publish request", f"{report.publish_seconds:.2f} s"),
        ("completed (simulator / server)", f"{report.completed} / {report.server_completed}"),
        ("publish → all completed", "not reached" if all_done is None else f"{all_done:.2f} s"),
        (
            "per-device completion p50 / p90 / p99",
            " / ".join(
                f"{report.completion_percentiles.get(name, float('nan')):.2f} s"
                for name in ("p50", "p90", "p99")
            ),
        ),
        (
            "heartbeat latency p50 / p99",
            " / ".join(
                f"{report.heartbeat_latency_ms.get(name, float('nan')):.1f} ms"
                for name in ("p50", "p99")
            ),
        ),
        (
            "requests",
            ", ".join(f"{kind} {count}" for kind, count in sorted(report.requests.items())),
        ),
        ("errors", str(report.error_count)),
        (
            "server CPU during rollout",
            "unknown"
            if report.server_cpu_seconds is None
            else f"{report.server_cpu_seconds:.1f} s ({report.server_cpu_percent:.0f} % of one core)",
        ),
        (
            "simulator CPU over the same time",
            "unknown"
            if report.simulator_cpu_seconds is None
            else f"{report.simulator_cpu_seconds:.1f} s",
        ),
        (
            "server RSS at the end",
            "unknown"
            if report.server_rss_bytes is None
            else f"{report.server_rss_bytes / 2**20:.0f} MiB",
        ),
        ("wall time", f"{report.wall_seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for kind, count in sorted(report.errors.items()):
        console.print(f"  [red]{count}[/red] × {markup_safe(kind)}", highlight=False)
