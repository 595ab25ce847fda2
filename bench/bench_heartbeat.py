"""Heartbeat check-ins per second: javia's local backend vs a bare FastAPI app.

200 registered devices check in over 200 concurrent connections (each
request is the next device's heartbeat, with its own token), against:

- the reference: ``bench/reference_app.py``, an ``async def`` FastAPI route
  returning a fixed JSON body, under the same uvicorn settings;
- ``javia server`` (local backend: SQLite + files) with no pending update;
- the same server after a scheduled update was published to all 200
  devices, so every answer carries an install directive.

Target (issue 7): javia ≥ 0.5 × the reference, p99 < 50 ms. Load comes from
``wrk`` (Debian package ``wrk``), or the httpx fallback if it is missing.

Run alone: ``python bench/bench_heartbeat.py [--runs 3] [--seconds 10]``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BenchResult, Row, summarize

from javia_updates.demo import example_app_dir

DEVICES = 200
CONNECTIONS = 200
BODY = '{"current_version":"v1.0.0","status":"online","metadata":{}}'


def heartbeat_requests(
    devices: list[tuple[str, str]],
) -> list[tuple[str, str, dict[str, str], str]]:
    """One heartbeat request per device, as wrk sends them."""
    return [
        (
            "POST",
            f"/api/v1/devices/{device_uuid}/heartbeat",
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            BODY,
        )
        for device_uuid, token in devices
    ]


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    result = BenchResult(
        name="heartbeat",
        title=f"Heartbeat check-ins, {DEVICES} devices, {CONNECTIONS} connections",
        command="python bench/bench_heartbeat.py",
    )
    runs = {"reference": [], "none": [], "pending": []}
    with benchlib.scratch_dir("heartbeat") as root, benchlib.javia_server(root / "fleet") as fleet:
        devices = benchlib.register_devices(
            fleet.url, fleet.api_key, DEVICES, current_version="v1.0.0"
        )
        requests = heartbeat_requests(devices)
        port = benchlib.free_port()
        reference = benchlib.start_process(
            [
                sys.executable,
                str(Path(__file__).with_name("reference_app.py")),
                "--port",
                str(port),
            ],
            root / "reference.log",
        )
        try:
            reference_url = f"http://127.0.0.1:{port}"
            benchlib.wait_for_http(f"{reference_url}/api/v1/health")

            def load(url: str) -> benchlib.LoadResult:
                return benchlib.run_load(
                    url, requests, connections=CONNECTIONS, seconds=args.seconds
                )

            load(reference_url)  # warm-up (imports, connection set-up), not counted
            load(fleet.url)
            for _ in range(args.runs):
                runs["reference"].append(load(reference_url))
                runs["none"].append(load(fleet.url))
            app_dir = root / "app"
            shutil.copytree(
                example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__")
            )
            fleet.publish(app_dir, "v1.1.0", "scheduled", "benchmark: pending for every device")
            for _ in range(args.runs):
                runs["pending"].append(load(fleet.url))
        finally:
            benchlib.stop_process(reference)

    generator = runs["reference"][0].generator
    reference_rps = summarize([run.requests_per_second for run in runs["reference"]])
    reference_p99 = summarize([run.latency_ms.get("p99", 0.0) for run in runs["reference"]])
    result.rows.append(
        Row(
            "reference: bare async FastAPI, fixed JSON",
            f"{reference_rps.show(0, '/s')}; p99 {reference_p99.show(1, 'ms')}",
            values={
                "rps": [r.requests_per_second for r in runs["reference"]],
                "p99_ms": [r.latency_ms.get("p99") for r in runs["reference"]],
            },
        )
    )
    for key, label in (
        ("none", "no pending update"),
        ("pending", "pending update (directive in every answer)"),
    ):
        rps = summarize([run.requests_per_second for run in runs[key]])
        p99 = summarize([run.latency_ms.get("p99", 0.0) for run in runs[key]])
        errors = sum(run.errors for run in runs[key])
        ratio = rps.median / reference_rps.median
        result.rows.append(
            Row(
                f"javia heartbeats/s, {label}",
                f"{rps.show(0, '/s')}; p99 {p99.show(1, 'ms')}"
                + (f"; {errors} errors" if errors else ""),
                reference=reference_rps.show(0, "/s"),
                ratio=f"{ratio:.2f} ×",
                target="≥ 0.5 × reference; p99 < 50 ms",
                met=ratio >= 0.5 and p99.median < 50 and errors == 0,
                values={
                    "rps": [r.requests_per_second for r in runs[key]],
                    "p99_ms": [r.latency_ms.get("p99") for r in runs[key]],
                    "p50_ms": [r.latency_ms.get("p50") for r in runs[key]],
                    "errors": errors,
                    "ratio": ratio,
                },
            )
        )
    result.notes.append(
        f"load generator: {generator}, {CONNECTIONS} connections, {args.seconds:g} s per run, "
        f"median (min–max) of {args.runs} runs after one warm-up run each"
        + (
            ""
            if generator == "wrk"
            else " — wrk is not installed (apt-get install wrk): the httpx generator is slower than both servers, so ratios understate the gap"
        )
    )
    result.notes.append(
        "p99 is measured under saturation (closed loop: each connection sends its next heartbeat as soon as the last was answered), so it includes queueing behind the other 199 connections"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
