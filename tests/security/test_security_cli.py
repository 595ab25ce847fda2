"""The operator's identity commands against a real server process on a loopback port:
``javia devices revoke | rotate-token | enrollment-token create|list|revoke``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from javia_cli.main import app as javia_app
from javia_updates.cli.devices import parse_duration
from shared_helpers import server_process

API_KEY = "cli-security-admin-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A `python -m javia_updates.server` process on a free loopback port; its base URL."""
    with server_process(tmp_path, API_KEY) as (base, _log_path):
        yield base


def javia(server: str, *args: str) -> tuple[int, str, str]:
    env = {"JAVIA_SERVER_URL": server, "JAVIA_API_KEY": API_KEY}
    result = CliRunner().invoke(javia_app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def heartbeat(server: str, device: str, token: str) -> int:
    return httpx.post(
        f"{server}/api/v1/devices/{device}/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {token}"},
    ).status_code


def test_enrollment_revocation_and_rotation_from_the_command_line(server: str) -> None:
    code, out, err = javia(
        server, "devices", "enrollment-token", "create", "--uses", "2", "--expires-in", "24h",
        "--label", "kitchen batch", "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert (created["max_uses"], created["uses"], created["label"]) == (2, 0, "kitchen batch")

    # A new Pi registers itself with the enrollment token, without the admin key.
    registered = httpx.post(
        f"{server}/api/v1/devices/register",
        json={"device_name": "kitchen"},
        headers={"Authorization": f"Bearer {created['token']}"},
    )
    assert registered.status_code == 201, registered.text
    device, token = registered.json()["device_uuid"], registered.json()["device_token"]
    assert heartbeat(server, device, token) == 200

    code, out, _ = javia(server, "devices", "enrollment-token", "list", "--json")
    listed = json.loads(out)
    assert [(t["id"], t["uses"], t["usable"]) for t in listed] == [(created["id"], 1, True)]
    assert created["token"] not in out
    code, out, _ = javia(server, "devices", "enrollment-token", "list")
    assert code == 0 and "1/2" in out and "usable" in out

    code, out, err = javia(server, "devices", "revoke", device)
    assert code == 0, err
    assert "revoked" in out
    assert heartbeat(server, device, token) == 401
    code, out, _ = javia(server, "devices", "show", device)
    assert "token revoked" in out

    code, out, err = javia(server, "devices", "rotate-token", device, "--json")
    assert code == 0, err
    new_token = json.loads(out)["device_token"]
    assert heartbeat(server, device, new_token) == 200
    assert heartbeat(server, device, token) == 401

    code, out, err = javia(server, "devices", "enrollment-token", "revoke", str(created["id"]))
    assert code == 0, err
    again = httpx.post(
        f"{server}/api/v1/devices/register",
        json={},
        headers={"Authorization": f"Bearer {created['token']}"},
    )
    assert again.status_code == 401 and "revoked" in again.json()["detail"]


def test_identity_commands_refuse_bad_input_with_one_line(server: str) -> None:
    code, _, err = javia(server, "devices", "revoke", "not-a-uuid")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "invalid device uuid" in err
    code, _, err = javia(server, "devices", "rotate-token", "3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "404" in err
    code, _, err = javia(server, "devices", "enrollment-token", "revoke", "999")
    assert code == 1 and "does not exist" in err
    code, _, err = javia(server, "devices", "enrollment-token", "create", "--expires-in", "3 weeks")
    assert code == 2 and "not a duration" in err


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86_400), ("7d", 604_800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
