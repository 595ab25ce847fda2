"""``GET /metrics`` of a real server process, parsed with Prometheus's own parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from tests.observability.helpers import API_KEY, Device, Operator, running

METRICS_TOKEN = "read-only-metrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: ``(name, labels) -> value``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_heartbeats_reports_downloads_and_the_fleet_for_the_token_or_admin(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    with running(
        tmp_path, JAVIA_METRICS_TOKEN=METRICS_TOKEN, JAVIA_HEARTBEAT_FLUSH_SECONDS="0"
    ) as server:
        operator = Operator(server.url)
        kitchen, hall, attic = (
            Device(server.url, *operator.register(name)) for name in ("kitchen", "hall", "attic")
        )
        kitchen.heartbeat("v1.0.0")
        hall.heartbeat("v1.0.0")
        update = operator.publish(signing_key, "v1.1.0")
        kitchen.heartbeat("v1.0.0")
        assert len(kitchen.download(update["id"])) == update["payload_size"]
        kitchen.report(update["id"], "downloading")
        kitchen.report(update["id"], "failed", "health check failed")

        scraped = httpx.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        parsed = samples(scraped.text)

        assert value(parsed, "javia_heartbeats_received_total") == 3
        assert value(parsed, "javia_status_reports_received_total", status="failed") == 1
        assert value(parsed, "javia_status_reports_received_total", status="downloading") == 1
        assert value(parsed, "javia_download_bytes_total") == update["payload_size"]
        assert value(parsed, "javia_devices", status="online", version="v1.0.0") == 2
        assert value(parsed, "javia_devices", status="offline", version="none") == 1
        assert value(parsed, "javia_update_devices", version="v1.1.0", status="failed") == 1
        assert value(parsed, "javia_update_devices", version="v1.1.0", status="pending") == 1
        assert value(parsed, "javia_rollout_state", version="v1.1.0", state="active") == 1
        assert value(parsed, "javia_db_write_batch_units_count") >= 2  # the two reports
        # Every write transaction (the reports' and the registrations') is timed.
        transactions = value(parsed, "javia_db_write_transaction_seconds_count")
        assert transactions >= value(parsed, "javia_db_write_batch_units_count")
        assert value(parsed, "javia_db_write_lock_wait_seconds_count") == transactions
        assert value(parsed, "javia_db_write_transaction_seconds_sum") > 0
        heartbeat_route = "/api/v1/devices/{device_uuid}/heartbeat"
        assert (
            value(
                parsed,
                "javia_http_request_duration_seconds_count",
                method="POST",
                route=heartbeat_route,
                status_class="2xx",
            )
            == 3
        )
        routes = {dict(labels).get("route") for _name, labels in parsed} - {None}
        assert not any(device.uuid in route for route in routes for device in (kitchen, hall))
        assert attic.uuid not in scraped.text

        # Only the admin key or the metrics token reads them.
        url = f"{server.url}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert httpx.get(url, headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401
        assert httpx.get(url, headers={"X-API-Key": API_KEY}).status_code == 200


WORKER = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from javia_updates import metrics
for _ in range(int(sys.argv[2])):
    metrics.count_heartbeat()
metrics.observe_write_batch(3)
"""

SCRAPE = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_counters_of_several_worker_processes_add_up(tmp_path: Path) -> None:
    """What ``javia server --workers N`` relies on: each process counts, a scrape sums them."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    for count in (3, 4):
        subprocess.run([sys.executable, "-c", WORKER, str(directory), str(count)], check=True)
    scraped = subprocess.run(
        [sys.executable, "-c", SCRAPE, str(directory)], check=True, capture_output=True, text=True
    ).stdout
    parsed = samples(scraped)
    assert value(parsed, "javia_heartbeats_received_total") == 7
    assert value(parsed, "javia_db_write_batch_units_count") == 2


def test_the_heartbeat_counter_says_what_it_counts_as_the_docs_do() -> None:
    from javia_updates.metrics import Recorders

    help_text = Recorders().heartbeats._documentation
    docs = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if "`javia_heartbeats_received_total`" in line)
    # The middleware counts a heartbeat only when it was answered with 2xx.
    assert "2xx" in help_text and "2xx" in row
    assert "every status code" not in help_text
