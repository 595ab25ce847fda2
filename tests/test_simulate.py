"""The fleet simulator against a real server process over loopback (issue 7)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from javia_updates.cli.main import app
from javia_updates.simulate import (
    SimulationConfig,
    SimulationError,
    process_cpu_seconds,
    process_rss_bytes,
    run_simulation,
)


def test_twenty_devices_install_an_instant_update_without_errors() -> None:
    report = run_simulation(
        SimulationConfig(
            devices=20, heartbeat_seconds=1.0, connections=8, timeout_seconds=20, seed=1
        )
    )

    assert report.errors == {}
    assert report.completed == 20
    assert report.server_completed == 20, "the server's own count must agree"
    assert report.succeeded
    assert report.seconds_to_all_completed is not None
    assert report.seconds_to_all_completed < 20
    # Every device fetched the package once and reported three steps.
    assert report.requests["download"] == 20
    assert report.requests["manifest"] == 20
    assert report.requests["status"] == 60
    assert report.heartbeat_latency_ms["p50"] > 0
    if os.path.exists("/proc/self/stat"):
        assert report.server_cpu_seconds is not None and report.server_cpu_seconds > 0
        assert report.server_rss_bytes is not None and report.server_rss_bytes > 10 * 2**20


def test_simulate_command_prints_a_json_report(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--devices",
            "3",
            "--heartbeat-seconds",
            "1",
            "--timeout",
            "20",
            "--json",
            "--work-dir",
            str(tmp_path / "work"),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["succeeded"] is True
    assert report["completed"] == 3
    assert report["error_count"] == 0
    # --work-dir keeps the server's log for a person to read.
    assert (tmp_path / "work" / "fleet" / "server.log").stat().st_size > 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": 0}, "devices is 0"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds is 0"),
        ({"connections": 0}, "at least 1"),
        ({"payload_bytes": -1}, "payload_bytes is -1"),
    ],
)
def test_nonsense_settings_are_refused_with_what_was_wrong(changes: dict, message: str) -> None:
    settings = {"devices": 1, **changes}

    with pytest.raises(SimulationError, match=message):
        SimulationConfig(**settings)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_proc_readings_of_this_process() -> None:
    spent_before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU
    spent_after = process_cpu_seconds(os.getpid())

    assert spent_before is not None and spent_after is not None
    assert spent_after > spent_before
    assert (process_rss_bytes(os.getpid()) or 0) > 1024 * 1024
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process
