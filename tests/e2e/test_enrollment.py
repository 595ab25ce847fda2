"""A new Pi enrols itself with an enrollment token, never holding the admin key (issue: security)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from javia_devtools.demo import FleetError, LocalFleet

pytestmark = pytest.mark.e2e


def _register(fleet: LocalFleet, root: Path, *credentials: str) -> Path:
    config = root / "agent.toml"
    fleet.run_javia(
        [
            "agent",
            "register",
            "--server",
            fleet.url,
            *credentials,
            "--name",
            root.name,
            "--timezone",
            "Europe/Berlin",
            "--config",
            str(config),
            "--token-file",
            str(root / "token"),
            "--install-root",
            str(root / "app"),
            "--state-dir",
            str(root / "state"),
            "--keyring",
            str(root / "keys"),
            "--service-mode",
            "command",
            "--start-command",
            "python3 app.py",
        ]
    )
    return config


def test_a_pi_self_registers_with_a_one_use_enrollment_token(fleet: LocalFleet, tmp_path: Path):
    with fleet.client() as client:
        token = client.create_enrollment_token(max_uses=1, expires_in_seconds=600).token

    config = _register(fleet, tmp_path / "first-pi", "--enrollment-token", token)
    device_uuid = tomllib.loads(config.read_text())["device_uuid"]
    assert fleet.api_key not in config.read_text()
    with fleet.client() as client:
        assert client.get_device(device_uuid).device_name == "first-pi"

    with pytest.raises(FleetError) as refused:
        _register(fleet, tmp_path / "second-pi", "--enrollment-token", token)
    assert "401" in str(refused.value) or "403" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    with fleet.client() as client:
        assert [d.device_name for d in client.list_devices()] == ["first-pi"]


def test_register_needs_exactly_one_credential(fleet: LocalFleet, tmp_path: Path):
    with pytest.raises(FleetError) as neither:
        _register(fleet, tmp_path / "pi")
    assert "--enrollment-token" in str(neither.value) and "Traceback" not in str(neither.value)
