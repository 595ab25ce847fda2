"""Heartbeat check-ins per second: javia's local backend vs a bare FastAPI app.

200 registered devices check in over 200 concurrent connections (each
request is the next device's heartbeat, with its own token), against:

- the reference: ``bench/reference_app.py``, an ``async def`` FastAPI route
  returning a fixed JSON body, under the same uvicorn settings;
- ``javia server`` (local backend: SQLite + files) with no pending update;
- the same server after a scheduled update was published to all 200
  devices, so every answer carries an install directive.

Target (issue 7): javia ≥ 0.5 × the reference, p99 < 50 ms (measured at that
target rate, with devices pausing between heartbeats). With the device cache
off (every heartbeat reads the database, as with a 5-minute heartbeat) the
server runs once as one process and once with ``--workers N`` (issue 14:
target ≥ 0.5 × the reference). Load comes from
``wrk`` (Debian package ``wrk``), or the httpx fallback if it is missing.

Run alone: ``python bench/bench_heartbeat.py [--runs 3] [--seconds 10] [--workers N]``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BenchResult, Row, summarize
from javia_devtools.demo import example_app_dir
from javia_updates.settings import available_cores

DEVICES = 200
CONNECTIONS = 200
BODY = '{"current_version":"v1.0.0","status":"online","metadata":{}}'
#: The per-device heartbeat rate limit (429) stays on but can never trip: each
#: device here heartbeats many times a second, as no real device would.
SERVER_ENV = {"JAVIA_HEARTBEAT_BURST": "1000000"}


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


LATENCY_SECONDS = 6.0
WARM_UP_SECONDS = 3.0


def load(
    url: str,
    requests: list[tuple[str, str, dict[str, str], str]],
    seconds: float,
    think_ms: float = 0.0,
) -> benchlib.LoadResult:
    """One load run of ``requests`` over :data:`CONNECTIONS` connections (``think_ms``: see run_load)."""
    return benchlib.run_load(
        url, requests, connections=CONNECTIONS, seconds=seconds, think_ms=think_ms
    )


def registered_and_warm(url: str, api_key: str) -> list[tuple[str, str, dict[str, str], str]]:
    """Register :data:`DEVICES` devices on the server at ``url``, warm it up; their heartbeats.

    Each device reports ``v1.0.0`` once; then one :data:`WARM_UP_SECONDS` load
    run (imports, connection set-up, caches) that is not counted.
    """
    devices = benchlib.register_devices(url, api_key, DEVICES, current_version="v1.0.0")
    requests = heartbeat_requests(devices)
    load(url, requests, WARM_UP_SECONDS)
    return requests


def _values(runs: list[benchlib.LoadResult]) -> dict:
    return {
        "rps": [run.requests_per_second for run in runs],
        "p50_ms": [run.latency_ms.get("p50") for run in runs],
        "p99_ms": [run.latency_ms.get("p99") for run in runs],
        "errors": sum(run.errors for run in runs),
    }


def cold_runs(root: Path, runs: int, seconds: float, workers: int = 1) -> list[benchlib.LoadResult]:
    """Saturated runs against a server with its device caches off (JAVIA_DEVICE_CACHE_SECONDS=0).

    With a 5-minute heartbeat a device is rarely still in the cache (30 s) when it
    comes back, so this is the rate that sizes a real fleet. ``workers``: the
    server's processes (``javia server --workers``).
    """
    env = {**SERVER_ENV, "JAVIA_DEVICE_CACHE_SECONDS": "0", "JAVIA_WORKERS": str(workers)}
    with benchlib.javia_server(root, env=env) as fleet:
        requests = registered_and_warm(fleet.url, fleet.api_key)
        return [load(fleet.url, requests, seconds) for _ in range(runs)]


def main() -> None:
    """Measure, print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--workers",
            type=int,
            default=max(2, available_cores()),
            help="server processes of the cold run with workers (1: skip it)",
        )

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="heartbeat",
        title=f"Heartbeat check-ins, {DEVICES} devices, {CONNECTIONS} connections",
        command="python bench/bench_heartbeat.py",
    )
    saturated: dict[str, list[benchlib.LoadResult]] = {"reference": [], "none": [], "pending": []}
    paced: dict[str, list[benchlib.LoadResult]] = {"reference": [], "none": [], "pending": []}
    with (
        benchlib.scratch_dir("heartbeat") as root,
        benchlib.javia_server(root / "fleet", env=SERVER_ENV) as fleet,
    ):
        requests = registered_and_warm(fleet.url, fleet.api_key)
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
            load(reference_url, requests, WARM_UP_SECONDS)  # imports, connections: not counted
            for _ in range(args.runs):
                saturated["reference"].append(load(reference_url, requests, args.seconds))
                saturated["none"].append(load(fleet.url, requests, args.seconds))
            # Latency at the target rate: half the reference's throughput, offered
            # by 200 devices that each pause between heartbeats.
            target_rate = (
                0.5 * summarize([r.requests_per_second for r in saturated["reference"]]).median
            )
            think_ms = 1000.0 * CONNECTIONS / target_rate
            paced["reference"].append(load(reference_url, requests, LATENCY_SECONDS, think_ms))
            for _ in range(args.runs):
                paced["none"].append(load(fleet.url, requests, LATENCY_SECONDS, think_ms))
            app_dir = root / "app"
            shutil.copytree(
                example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__")
            )
            fleet.publish(app_dir, "v1.1.0", "scheduled", "benchmark: pending for every device")
            for _ in range(args.runs):
                saturated["pending"].append(load(fleet.url, requests, args.seconds))
                paced["pending"].append(load(fleet.url, requests, LATENCY_SECONDS, think_ms))
        finally:
            benchlib.stop_process(reference)
        cold = cold_runs(root / "cold", args.runs, args.seconds)
        cold_workers = (
            cold_runs(root / "cold-workers", args.runs, args.seconds, args.workers)
            if args.workers > 1
            else []
        )

    generator = saturated["reference"][0].generator
    reference_rps = summarize([run.requests_per_second for run in saturated["reference"]])
    reference_sat_p99 = summarize(
        [run.latency_ms.get("p99", 0.0) for run in saturated["reference"]]
    )
    reference_paced = paced["reference"][0]
    result.rows.append(
        Row(
            "reference: bare async FastAPI, fixed JSON",
            f"{reference_rps.show(0, '/s')} (p99 {reference_sat_p99.show(0, 'ms')} saturated); "
            f"p99 {reference_paced.latency_ms.get('p99', 0):.1f} ms at "
            f"{reference_paced.requests_per_second:,.0f}/s",
            values={
                "saturated": _values(saturated["reference"]),
                "paced": _values(paced["reference"]),
            },
        )
    )
    for key, label in (
        ("none", "no pending update"),
        ("pending", "pending update (directive in every answer)"),
    ):
        rps = summarize([run.requests_per_second for run in saturated[key]])
        p99 = summarize([run.latency_ms.get("p99", 0.0) for run in paced[key]])
        paced_rate = summarize([run.requests_per_second for run in paced[key]])
        errors = sum(run.errors for run in saturated[key] + paced[key])
        ratio = rps.median / reference_rps.median
        result.rows.append(
            Row(
                f"javia heartbeats/s, {label}",
                f"{rps.show(0, '/s')}; p99 {p99.show(1, 'ms')} at {paced_rate.median:,.0f}/s"
                + (f"; {errors} errors" if errors else ""),
                reference=reference_rps.show(0, "/s"),
                ratio=f"{ratio:.2f} ×",
                target="≥ 0.5 × reference; p99 < 50 ms",
                met=ratio >= 0.5 and p99.median < 50 and errors == 0,
                values={
                    "saturated": _values(saturated[key]),
                    "paced": _values(paced[key]),
                    "ratio": ratio,
                    "target_rate": target_rate,
                },
            )
        )
    cold_rps = summarize([run.requests_per_second for run in cold])
    result.rows.append(
        Row(
            "javia heartbeats/s, caches off (every heartbeat reads the database, as with "
            "a 5-minute heartbeat)",
            cold_rps.show(0, "/s")
            + (f"; {sum(r.errors for r in cold)} errors" if any(r.errors for r in cold) else ""),
            reference=reference_rps.show(0, "/s"),
            ratio=f"{cold_rps.median / reference_rps.median:.2f} ×",
            values={"saturated": _values(cold)},
        )
    )
    if cold_workers:
        rps = summarize([run.requests_per_second for run in cold_workers])
        errors = sum(run.errors for run in cold_workers)
        ratio = rps.median / reference_rps.median
        result.rows.append(
            Row(
                f"javia heartbeats/s, caches off, {args.workers} workers "
                "(javia server --workers; the reference is one process)",
                rps.show(0, "/s") + (f"; {errors} errors" if errors else ""),
                reference=reference_rps.show(0, "/s"),
                ratio=f"{ratio:.2f} ×",
                target="≥ 0.5 × reference",
                met=ratio >= 0.5 and errors == 0,
                values={"saturated": _values(cold_workers), "workers": args.workers},
            )
        )
    result.notes.append(
        f"load generator: {generator}, {CONNECTIONS} connections (one device after the other, each "
        f"with its own token); throughput: saturated closed loop, {args.seconds:g} s per run; "
        f"median (min–max) of {args.runs} runs after a warm-up"
        + (
            ""
            if generator == "wrk"
            else " — wrk is not installed (apt-get install wrk): the httpx generator is "
            "slower than both servers, so the ratios understate the gap"
        )
    )
    result.notes.append(
        f"p99 is measured at the target rate, 0.5 × the reference's throughput ({target_rate:,.0f}/s): "
        f"each of the {CONNECTIONS} connections pauses a random 0.5–1.5 × {think_ms:.0f} ms after "
        f"every answer, as devices wait between heartbeats ({LATENCY_SECONDS:g} s runs). Saturated "
        "p99 only measures the queue of 200 connections behind a busy server"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
