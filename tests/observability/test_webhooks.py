"""Webhooks against a real local receiver: signatures, events, retries, a killed server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.observability.helpers import (
    API_KEY,
    START_SECONDS,
    Device,
    Operator,
    Receiver,
    running,
)
from typer.testing import CliRunner

from javia_devtools.server_process import ServerProcess, javia_command
from javia_updates.cli import webhooks as webhooks_cli
from javia_updates.webhooks.events import verify_signature

FAST = {"JAVIA_WEBHOOK_POLL_SECONDS": "0.1", "JAVIA_HEARTBEAT_FLUSH_SECONDS": "0"}


def javia(server: ServerProcess, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``javia`` CLI against ``server`` (operator settings from the environment only)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")}
    env |= {
        "JAVIA_SERVER_URL": server.url,
        "JAVIA_API_KEY": API_KEY,
        "JAVIA_OPERATOR_CONFIG": str(tmp_path / "no-operator.toml"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [*javia_command(), *args], env=env, capture_output=True, text=True, timeout=60
    )


def events_of(requests: list[tuple[dict[str, str], bytes, float]]) -> list[dict[str, Any]]:
    return [json.loads(body) for _headers, body, _at in requests]


def add_webhook(server: ServerProcess, url: str, *events: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/api/v1/webhooks/",
        json={"url": url, "events": list(events)},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def deliveries(server: ServerProcess) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/webhooks/deliveries", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    rows: list[dict[str, Any]] = response.json()
    return rows


def test_signed_events_reach_a_receiver_and_the_cli_shows_them(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    receiver = Receiver()
    try:
        with running(tmp_path, **FAST) as server:
            added = javia(
                server,
                tmp_path,
                "webhooks",
                "add",
                receiver.url,
                "--event",
                "device.registered",
                "--event",
                "device.failed",
                "--event",
                "update.published",
                "--event",
                "rollout.completed",
                "--json",
            )
            assert added.returncode == 0, added.stderr
            webhook = json.loads(added.stdout)
            secret = webhook["secret"]

            operator = Operator(server.url)
            device = Device(server.url, *operator.register("kitchen"))
            device.heartbeat("v1.0.0")
            update = operator.publish(signing_key, "v1.1.0")
            device.heartbeat("v1.0.0")
            device.report(update["id"], "downloading")
            failure = {
                "failure_class": "crash_after_start",
                "step": "health_check",
                "reason": "app.py exited 1 during its 30 s health check",
                "exit_code": 1,
                "output_tail": "x" * 5000 + "\nRuntimeError: no microphone",
                "output_source": "journal",
            }
            answer = device.http.post(
                f"/api/v1/devices/{device.uuid}/updates/{update['id']}/status",
                json={
                    "status": "failed",
                    "error_message": "app.py exited 1 during the health check",
                    "failure": failure,
                },
            )
            assert answer.status_code == 200, answer.text

            requests = receiver.wait_for(4)
            for headers, body, _at in requests:
                assert verify_signature(secret, header=headers["X-Javia-Signature"], body=body)
                assert headers["X-Javia-Event-Id"] == json.loads(body)["id"]
            by_type = {event["type"]: event for event in events_of(requests)}
            assert set(by_type) == {
                "device.registered",
                "update.published",
                "device.failed",
                "rollout.completed",
            }
            assert by_type["device.registered"]["data"]["device_uuid"] == device.uuid
            assert by_type["update.published"]["data"]["version"] == "v1.1.0"
            failed = by_type["device.failed"]["data"]
            assert failed["device_uuid"] == device.uuid
            assert failed["version"] == "v1.1.0"
            assert failed["error_message"] == "app.py exited 1 during the health check"
            carried = failed["failure"]
            assert carried["failure_class"] == "crash_after_start"
            assert (carried["step"], carried["exit_code"]) == ("health_check", 1)
            assert carried["reason"] == failure["reason"]
            assert len(carried["output_tail"]) == 2000
            assert carried["output_tail"].endswith("\nRuntimeError: no microphone")
            assert by_type["rollout.completed"]["data"]["version"] == "v1.1.0"
            assert not verify_signature(
                "whsec_wrong", header=headers["X-Javia-Signature"], body=body
            )

            tested = javia(server, tmp_path, "webhooks", "test", str(webhook["id"]))
            assert tested.returncode == 0, tested.stderr
            assert events_of(receiver.wait_for(5))[-1]["type"] == "webhook.test"

            shown = javia(server, tmp_path, "webhooks", "deliveries", "--json")
            assert shown.returncode == 0, shown.stderr
            rows = json.loads(shown.stdout)
            assert len(rows) == 5 and {row["state"] for row in rows} == {"delivered"}
            assert all(row["attempt_log"][0]["status_code"] == 200 for row in rows)
            unknown = javia(server, tmp_path, "webhooks", "deliveries", "--webhook", "999")
            assert unknown.returncode == 1 and "no webhook 999" in unknown.stderr + unknown.stdout
            listed = javia(server, tmp_path, "webhooks", "list")
            assert "/hooks/javia" in listed.stdout and secret not in listed.stdout
            hostile = httpx.post(
                f"{server.url}/api/v1/webhooks/",
                json={"url": "javascript:alert(1)", "events": ["device.failed"]},
                headers={"X-API-Key": API_KEY},
            )
            assert hostile.status_code == 422 and "url" in hostile.text
            removed = javia(server, tmp_path, "webhooks", "remove", str(webhook["id"]))
            assert removed.returncode == 0, removed.stderr
            assert deliveries(server) == []
    finally:
        receiver.close()


def test_the_cli_refuses_a_bad_url_or_event_in_one_line() -> None:
    runner = CliRunner()
    for args, expected in (
        (["ftp://example.com/x", "--event", "device.failed"], "http:// or https://"),
        (["https://example.com/x", "--event", "device.exploded"], "unknown event"),
        (["https://example.com/x"], "at least one --event"),
    ):
        # Refused before any request: the server URL and key are never used.
        result = runner.invoke(webhooks_cli.app, ["add", *args, "--api-key", API_KEY])
        assert result.exit_code == 1
        assert expected in result.output and "Traceback" not in result.output


def test_a_failing_receiver_gets_retries_with_backoff_then_a_give_up(tmp_path: Path) -> None:
    flaky, broken = Receiver([500, 500]), Receiver([500] * 10)
    timing = {"JAVIA_WEBHOOK_RETRY_SECONDS": "0.3", "JAVIA_WEBHOOK_GIVE_UP_SECONDS": "3"}
    try:
        with running(tmp_path, **FAST, **timing) as server:
            for receiver in (flaky, broken):
                hook = add_webhook(server, receiver.url, "device.registered")
            Operator(server.url).register("kitchen")
            arrivals = [at for _headers, _body, at in flaky.wait_for(3)]
            assert arrivals[1] - arrivals[0] >= 0.3  # first retry after 0.3 s
            assert arrivals[2] - arrivals[1] >= 0.6  # then doubled
            assert len({json.loads(body)["id"] for _h, body, _at in flaky.requests}) == 1
            broken.wait_for(2)
            deadline = arrivals[0] + 30
            rows: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                rows = deliveries(server)
                if {row["state"] for row in rows} == {"delivered", "failed"}:
                    break
                time.sleep(0.1)
            states = {row["webhook_id"]: row for row in rows}
            gave_up = states[hook["id"]]
            assert gave_up["state"] == "failed"
            # Attempts at about 0, 0.3, 0.9, 2.1 s; the next (4.5 s) would pass the give-up time.
            codes = [attempt["status_code"] for attempt in gave_up["attempt_log"]]
            assert len(codes) == gave_up["attempts"] >= 2 and set(codes) == {500}
            assert gave_up["last_error"].startswith("HTTP 500")
            delivered = next(row for row in rows if row["webhook_id"] != hook["id"])
            assert [a["status_code"] for a in delivered["attempt_log"]] == [500, 500, 200]
    finally:
        flaky.close()
        broken.close()


def test_killing_the_server_mid_delivery_loses_no_event(tmp_path: Path) -> None:
    receiver = Receiver(stall_first=True)
    try:
        with running(tmp_path, **FAST, JAVIA_WEBHOOK_TIMEOUT_SECONDS="1") as server:
            add_webhook(server, receiver.url, "device.registered")
            uuid, _token = Operator(server.url).register("kitchen")
            receiver.wait_for(1)  # the server is waiting for this receiver's answer
            assert server.process is not None
            server.process.kill()  # SIGKILL: no shutdown, the lease stays in the database
            server.process.wait()
            receiver.release()
            server.start(timeout=START_SECONDS)
            requests = receiver.wait_for(2)
            first, again = events_of(requests[:2])
            assert first == again and again["data"]["device_uuid"] == uuid
            rows = deliveries(server)
            assert [row["state"] for row in rows] == ["delivered"]
    finally:
        receiver.close()
