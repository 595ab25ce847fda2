"""Server CPU per request on each device route of a rollout (diagnostic for the fleet simulator).

Set-up: a real ``javia server`` (local backend), ``--devices`` devices
registered and seen, an instant update published, every device holding its
row (one ``downloading`` report each). Then, one route at a time, wrk (or
the httpx fallback) sends that request for every device in turn over 16
connections for ``--seconds``: the manifest, the signature, the 64 KiB
payload, and a status report (heartbeats have their own benchmark,
``bench_heartbeat.py``; here the rate limit would refuse most of them). The status report repeats ``downloading``, so after the first round
it changes nothing: it measures the write transaction's path without its
fsync. Reported: requests per second and the server's CPU (user + system,
from ``/proc``) divided by the requests answered.

Not in the issue's table: it explains where the fleet simulator's server
time goes (docs/benchmarks.md, "Rollouts").

Run alone: ``python bench/bench_device_routes.py [--runs 1] [--seconds 5]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

import benchlib
from benchlib import BenchResult, Row, summarize
from javia_devtools.simulate import BASE_VERSION, _build_package

CONNECTIONS = 16


def main() -> None:
    """Measure each route, print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=benchlib.positive(int), default=64)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="routes",
        title="Device routes of a rollout: server CPU per request",
        command="python bench/bench_device_routes.py",
    )
    with benchlib.scratch_dir("routes") as root, benchlib.javia_server(root / "fleet") as fleet:
        assert fleet.server is not None
        devices = benchlib.register_devices(
            fleet.url, fleet.api_key, args.devices, current_version=BASE_VERSION
        )
        package, _keyring = _build_package(root, 64 * 1024)
        with fleet.client() as admin:
            admin.publish(
                manifest_path=package.manifest_path,
                signature_path=package.signature_path,
                payload_path=package.payload_path,
            )
        directives = []
        with httpx.Client(base_url=fleet.url, timeout=60) as client:
            for device_uuid, token in devices:
                headers = {"Authorization": f"Bearer {token}"}
                answer = client.post(
                    f"/api/v1/devices/{device_uuid}/heartbeat",
                    headers=headers,
                    json={"current_version": BASE_VERSION},
                )
                answer.raise_for_status()
                directive = answer.json()["update"]
                client.post(
                    f"/api/v1/devices/{device_uuid}/updates/{directive['update_id']}/status",
                    headers=headers,
                    json={"status": "downloading"},
                ).raise_for_status()
                directives.append((device_uuid, headers, directive))

        def path_of(url: str) -> str:
            return "/" + url.split("/", 3)[3] if url.startswith("http") else url

        json_header = {"Content-Type": "application/json"}
        routes = {
            "manifest": [
                ("GET", path_of(d["manifest_url"]), headers, "") for _, headers, d in directives
            ],
            "signature": [
                ("GET", path_of(d["signature_url"]), headers, "") for _, headers, d in directives
            ],
            "download (64 KiB payload)": [
                ("GET", path_of(d["download_url"]), headers, "") for _, headers, d in directives
            ],
            "status report (repeated, no change)": [
                (
                    "POST",
                    f"/api/v1/devices/{uuid}/updates/{d['update_id']}/status",
                    {**headers, **json_header},
                    json.dumps({"status": "downloading"}),
                )
                for uuid, headers, d in directives
            ],
        }
        for name, requests in routes.items():
            rates, costs, errors = [], [], 0
            for _ in range(args.runs):
                cpu_before = benchlib.process_cpu_seconds(fleet.server.pid)
                load = benchlib.run_load(
                    fleet.url, requests, connections=CONNECTIONS, seconds=args.seconds
                )
                cpu_after = benchlib.process_cpu_seconds(fleet.server.pid)
                answered = load.requests_per_second * args.seconds
                rates.append(load.requests_per_second)
                errors += load.errors
                if cpu_before is not None and cpu_after is not None and answered:
                    costs.append((cpu_after - cpu_before) * 1000 / answered)
            rate = summarize(rates)
            measured = f"{rate.show(0)} /s"
            if costs:
                measured += f"; server CPU {summarize(costs).show(2)} ms per request"
            if errors:
                measured += f"; {errors} errors"
            result.rows.append(Row(name, measured, values={"rates": rates, "cpu_ms": costs}))
    result.notes.append(
        f"{args.devices} devices, each request sent for every device in turn over {CONNECTIONS} "
        f"connections; {args.runs} run(s) of {args.seconds:g} s per route; CPU per request "
        "includes uvicorn, the access log and SQLite's work"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
