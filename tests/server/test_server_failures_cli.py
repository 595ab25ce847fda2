"""``javia updates failures``, ``updates show`` and ``devices show`` print why devices failed.

One real server process; the CLI runs as the operator runs it. Device text
(an application's output with an escape sequence) is shown escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_server_rollout_cli import javia

from shared_helpers import bearer, build_package, server_process

API_KEY = "failures-cli-admin-key-0123456789"


def test_the_operator_sees_why_devices_failed(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    with server_process(tmp_path, API_KEY) as (url, _log):
        admin = {"X-API-Key": API_KEY}
        devices = []
        for name in ("kitchen", "hall", "attic"):
            body = httpx.post(
                f"{url}/api/v1/devices/register", json={"device_name": name}, headers=admin
            ).json()
            devices.append((body["device_uuid"], body["device_token"]))
        package = build_package("v1.1.0", "scheduled", signing_key=signing_key)
        update = httpx.post(f"{url}/api/v1/updates/", files=package.files(), headers=admin)
        assert update.status_code == 201, update.text
        update_id = update.json()["id"]
        for index, (device_uuid, token) in enumerate(devices):
            status_url = f"{url}/api/v1/devices/{device_uuid}/updates/{update_id}/status"
            httpx.post(status_url, json={"status": "installing"}, headers=bearer(token))
            failure = {
                "failure_class": "crash_after_start",
                "step": "health_check",
                "reason": f"v1.1.0 stopped running {index}.2 s into its 30 s health check",
                "exit_code": 3,
                "output_tail": f"starting\n\x1b[31mRuntimeError: no microphone (pid {900 + index})",
                "output_source": "app_log",
            }
            if index == 2:
                failure = {"failure_class": "start", "step": "switching", "reason": "no such file"}
            answer = httpx.post(
                status_url,
                json={"status": "rolled_back", "error_message": "x", "failure": failure},
                headers=bearer(token),
            )
            assert answer.status_code == 200, answer.text

        grouped = javia("updates", "failures", "v1.1.0", "--server", url, "--api-key", API_KEY)
        assert grouped.returncode == 0, grouped.stderr
        text = grouped.stdout
        assert "3 failed or rolled back, 2 causes" in text
        assert "crash_after_start" in text and "start" in text
        assert "exit code" in text and "RuntimeError: no microphone" in text
        assert "\x1b" not in text and "\\x1b[31m" in text  # device text escaped

        as_json = javia(
            "updates", "failures", "v1.1.0", "--json", "--server", url, "--api-key", API_KEY
        )
        body = json.loads(as_json.stdout)
        assert [(g["failure_class"], g["count"]) for g in body["groups"]] == [
            ("crash_after_start", 2),
            ("start", 1),
        ]

        shown = javia("updates", "show", "v1.1.0", "--server", url, "--api-key", API_KEY)
        assert shown.returncode == 0, shown.stderr
        assert "why kitchen rolled_back" in shown.stdout and "signal" not in shown.stdout
        assert "\x1b" not in shown.stdout

        device = javia("devices", "show", devices[2][0], "--server", url, "--api-key", API_KEY)
        assert device.returncode == 0, device.stderr
        assert "why v1.1.0 rolled_back" in device.stdout and "switching" in device.stdout
