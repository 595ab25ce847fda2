"""The dashboard's polled pages: latency and server CPU per request as the fleet grows.

Set-up: a real ``javia server`` (local backend), ``--devices`` devices
registered and seen, an instant update published (a row per device), one
dashboard session (the admin key posted to ``/dashboard/login``). Then, one
page at a time, ``--requests`` sequential GETs of its JSON, as the page polls
it every 2 s: the fleet overview (counts per status and version, the first
200 devices, the newest updates with their rollouts) and the rollout page (the
update, its phases and health, the first 500 device rows). Reported: the
median latency and the server's CPU (user + system, from ``/proc``) per
request, which says how many operators polling cost as much as what.

Run alone: ``python bench/bench_dashboard.py [--devices 2000] [--requests 40] [--runs 3]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

import benchlib
from benchlib import BenchResult, Row, summarize
from javia_devtools.simulate import BASE_VERSION, _build_package

#: The page polls every this many seconds (static/app.js, POLL_MS).
POLL_SECONDS = 2.0


def main() -> None:
    """Measure each page, print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=benchlib.positive(int), default=2000)
        parser.add_argument("--requests", type=benchlib.positive(int), default=40)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="dashboard",
        title="Dashboard pages: latency and server CPU per poll",
        command=f"python bench/bench_dashboard.py --devices {args.devices}",
    )
    with benchlib.scratch_dir("dashboard") as root, benchlib.javia_server(root / "fleet") as fleet:
        assert fleet.server is not None
        benchlib.register_devices(
            fleet.url, fleet.api_key, args.devices, current_version=BASE_VERSION
        )
        package, _keyring = _build_package(root, 64 * 1024)
        with fleet.client() as admin:
            update = admin.publish(
                manifest_path=package.manifest_path,
                signature_path=package.signature_path,
                payload_path=package.payload_path,
            )
        with httpx.Client(base_url=fleet.url, timeout=60) as client:
            login = client.post("/dashboard/login", data={"api_key": fleet.api_key})
            if login.status_code != 303:
                raise SystemExit(f"dashboard login failed: HTTP {login.status_code}")
            pages = {
                "fleet overview": "/dashboard/api/overview",
                "rollout page": f"/dashboard/api/updates/{update.version}",
            }
            for name, path in pages.items():
                client.get(path).raise_for_status()  # warm the caches
                latencies, costs = [], []
                for _ in range(args.runs):
                    cpu_before = benchlib.process_cpu_seconds(fleet.server.pid)
                    for _ in range(args.requests):
                        sent = time.perf_counter()
                        client.get(path).raise_for_status()
                        latencies.append((time.perf_counter() - sent) * 1000)
                    cpu_after = benchlib.process_cpu_seconds(fleet.server.pid)
                    if cpu_before is not None and cpu_after is not None:
                        costs.append((cpu_after - cpu_before) * 1000 / args.requests)
                measured = f"median {statistics.median(latencies):.1f} ms"
                if costs:
                    cost = summarize(costs)
                    measured += (
                        f"; server CPU {cost.show(1)} ms per request "
                        f"({cost.median / (POLL_SECONDS * 10):.2f} % of a core per polling operator)"
                    )
                result.rows.append(
                    Row(
                        f"{name}, {args.devices} devices",
                        measured,
                        values={"latency_ms": latencies, "cpu_ms": costs},
                    )
                )
    result.notes.append(
        f"{args.devices} devices, one update with a row per device; {args.runs} run(s) of "
        f"{args.requests} sequential requests per page over one connection"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
