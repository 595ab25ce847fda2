"""Rough edges a new user hit in the operator CLI, each reproduced against a real server:
publish on a file, a revoked device in ``devices list``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from javia_updates.admin_client import AdminClient
from shared_helpers import server_process
from test_cli import assert_one_clean_error, javia

API_KEY = "rough-edges-admin-key-0123456789"


def test_publish_on_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "app.tar"
    not_a_folder.write_text("x")
    result = javia("publish", str(not_a_folder), "--version", "v1.0.1", "--type", "scheduled")
    assert_one_clean_error(result, "is not a directory")
    assert "does not exist" not in result.stderr
    missing = javia("publish", str(tmp_path / "nowhere"), "--version", "v1.0.1")
    assert_one_clean_error(missing, "does not exist")


def test_a_revoked_device_is_listed_as_revoked_never_online(tmp_path: Path) -> None:
    with server_process(tmp_path, API_KEY) as (url, _log):
        with AdminClient(url, API_KEY) as admin:
            kept = admin.register_device(device_name="kept")
            gone = admin.register_device(device_name="gone")
            for device in (kept, gone):
                httpx.post(
                    f"{url}/api/v1/devices/{device.device_uuid}/heartbeat",
                    json={"current_version": "v1.0.0", "status": "online"},
                    headers={"Authorization": f"Bearer {device.device_token}"},
                ).raise_for_status()
            admin.revoke_device_token(str(gone.device_uuid))
        common = ["--server", url, "--api-key", API_KEY]

        listed = javia("devices", "list", *common, env={"COLUMNS": "200"})
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "│" in line}
        assert "revoked" in rows["gone"] and "online" not in rows["gone"]
        assert "online" in rows["kept"] and "revoked" not in rows["kept"]

        def names(*options: str) -> set[str]:
            result = javia("devices", "list", *options, "--json", *common)
            assert result.returncode == 0, result.stderr
            return {device["device_name"] for device in json.loads(result.stdout)}

        assert names("--revoked") == {"gone"}
        assert names("--no-revoked") == {"kept"}
        assert names("--status", "revoked") == {"gone"}
        assert names("--status", "online") == {"kept"}

        shown = javia("devices", "show", str(gone.device_uuid), *common, env={"COLUMNS": "200"})
        assert "revoked" in shown.stdout.split("status", 1)[1].splitlines()[0]
