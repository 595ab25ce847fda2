"""Download a 100 MB package, 50 concurrent clients: javia vs nginx serving the same file.

Set-up (not timed): a package whose payload is 100 MB of random bytes,
published to a real ``javia server`` for 50 registered devices. nginx (Debian
package ``nginx-light``; one worker process, ``sendfile on``, no access log)
serves the very file from javia's blob store.

Timed: 50 connections download in a loop for ``--seconds`` (each device with
its own token on javia's ``GET /api/v1/updates/{id}/download``), with
``wrk`` (or the httpx fallback). Throughput is response bytes read per
second. The server's resident memory is sampled every 0.1 s; growth is peak
minus the value before the run.

Targets (issue 7): ≥ 0.5 × nginx's throughput; server RSS growth ≤ 50 MB.

Run alone: ``python bench/bench_download.py [--runs 3] [--seconds 10]``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import MIB, BenchResult, Row, summarize
from javia_devtools.demo import example_app_dir
from javia_updates.admin_client import AdminClient

CLIENTS = 50
PAYLOAD_BYTES = 100 * 1000 * 1000


def nginx_config(root: Path, port: int, document_root: Path) -> Path:
    """An nginx configuration serving ``document_root`` on 127.0.0.1:``port``."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = root / "nginx.conf"
    config.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {root / "nginx.pid"};
error_log {root / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {root / "body"};
    server {{
        listen 127.0.0.1:{port};
        root {document_root};
        location / {{ }}
    }}
}}
""",
        encoding="utf-8",
    )
    return config


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    result = BenchResult(
        name="download",
        title=f"Download a 100 MB package, {CLIENTS} concurrent clients",
        command="python bench/bench_download.py",
    )
    javia_runs: list[benchlib.LoadResult] = []
    nginx_runs: list[benchlib.LoadResult] = []
    growth: list[float] = []
    nginx_path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    with benchlib.scratch_dir("download") as root, benchlib.javia_server(root / "fleet") as fleet:
        devices = benchlib.register_devices(fleet.url, fleet.api_key, CLIENTS)
        app_dir = root / "app"
        shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        (app_dir / "model.bin").write_bytes(secrets.token_bytes(PAYLOAD_BYTES))
        package = fleet.build_package(app_dir, "v1.1.0", "scheduled", root / "package")
        with AdminClient(fleet.url, fleet.api_key, timeout=300) as admin:
            update = admin.publish(
                manifest_path=package / "manifest.json",
                signature_path=package / "manifest.sig",
                payload_path=package / "payload.tar.gz",
                targets=[device_uuid for device_uuid, _ in devices],
            )
        size = update.size
        path = f"/api/v1/updates/{update.id}/download"
        requests = [("GET", path, {"Authorization": f"Bearer {token}"}, "") for _, token in devices]
        stored = next((fleet.root / "server").rglob("payload.tar.gz"))
        assert fleet.server is not None

        def load(url: str, reqs: list) -> benchlib.LoadResult:
            return benchlib.run_load(
                url, reqs, connections=CLIENTS, seconds=args.seconds, timeout_seconds=120
            )

        nginx = None
        if nginx_path is not None:
            port = benchlib.free_port()
            document_root = root / "www"
            document_root.mkdir()
            os.link(stored, document_root / "payload.tar.gz")
            (root / "body").mkdir()
            config = nginx_config(root, port, document_root)
            nginx = benchlib.start_process(
                [nginx_path, "-c", str(config), "-e", str(root / "nginx-error.log")],
                root / "nginx.log",
            )
            nginx_url = f"http://127.0.0.1:{port}"
            benchlib.wait_for_http(f"{nginx_url}/payload.tar.gz")
        try:
            load(fleet.url, requests)  # warm-up: page cache, code paths
            for _ in range(args.runs):
                if nginx is not None:
                    nginx_runs.append(load(nginx_url, [("GET", "/payload.tar.gz", {}, "")]))
                with benchlib.peak_rss_sampler(fleet.server.pid) as sampler:
                    javia_runs.append(load(fleet.url, requests))
                growth.append((sampler.peak - sampler.before) / MIB)
        finally:
            if nginx is not None:
                benchlib.stop_process(nginx)

    javia = summarize([run.bytes_per_second / MIB for run in javia_runs])
    rss = summarize(growth)
    errors = sum(run.errors for run in javia_runs)
    values = {
        "javia_mib_per_s": [run.bytes_per_second / MIB for run in javia_runs],
        "nginx_mib_per_s": [run.bytes_per_second / MIB for run in nginx_runs],
        "rss_growth_mib": growth,
        "payload_bytes": size,
        "errors": errors,
    }
    if nginx_runs:
        reference = summarize([run.bytes_per_second / MIB for run in nginx_runs])
        ratio = javia.median / reference.median
        result.rows.append(
            Row(
                "javia download throughput",
                javia.show(0, "MiB/s") + (f"; {errors} errors" if errors else ""),
                reference=f"{reference.show(0, 'MiB/s')} (nginx)",
                ratio=f"{ratio:.2f} ×",
                target="≥ 0.5 × nginx",
                met=ratio >= 0.5 and errors == 0,
                values={**values, "ratio": ratio},
            )
        )
    else:
        result.rows.append(
            Row(
                "javia download throughput",
                javia.show(0, "MiB/s"),
                reference="nginx not installed (apt-get install nginx-light): no reference",
                target="≥ 0.5 × nginx",
                met=None,
                values=values,
            )
        )
    result.rows.append(
        Row(
            "javia server RSS growth during the run",
            rss.show(1, "MiB"),
            target="≤ 50 MB",
            met=rss.high * MIB <= 50 * 1000 * 1000,
            values=values,
        )
    )
    generator = javia_runs[0].generator
    result.notes.append(
        f"payload {size / 1e6:.0f} MB; load generator {generator}, {CLIENTS} connections looping downloads for "
        f"{args.seconds:g} s; median (min–max) of {args.runs} runs; throughput counts every byte read, "
        "finished downloads or not"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
