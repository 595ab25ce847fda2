"""Device tags through the real CLI and a real server process (docs/rollouts.md, "Tags").

``javia agent register --tag``, ``javia devices tag``, ``javia devices list
--tag``, ``javia publish --tag`` and ``javia updates plan``; bad input is one
red line naming the tag and the expected form, a non-zero exit, and nothing
changed on the server.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from javia_devtools.demo import FleetError, LocalFleet
from javia_devtools.server_process import javia_command

from .test_enrollment import _register

pytestmark = pytest.mark.e2e


def javia(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """One ``javia`` command against the fleet's server, with the admin key where it applies."""
    return subprocess.run(
        [*javia_command(), *args],
        env=fleet._env(
            {"JAVIA_SERVER_URL": fleet.url, "JAVIA_API_KEY": fleet.api_key, "COLUMNS": "200"}
        ),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_red_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr


def test_agent_register_tag_and_list_by_tag(fleet: LocalFleet, tmp_path: Path):
    root = tmp_path / "kitchen-pi"
    _register(fleet, root, "--api-key", fleet.api_key, "--tag", "kitchen", "--tag", "beta")
    device_uuid = tomllib.loads((tmp_path / "kitchen-pi" / "agent.toml").read_text())["device_uuid"]
    with fleet.client() as client:
        client.register_device(device_name="attic-pi")

    listed = javia(fleet, "devices", "list", "--tag", "kitchen", "--json")
    table = javia(fleet, "devices", "list")
    retagged = javia(fleet, "devices", "tag", device_uuid, "--add", "attic", "--remove", "beta")
    as_json = javia(fleet, "devices", "tag", device_uuid, "--add", "attic", "--json")

    assert [device["device_uuid"] for device in json.loads(listed.stdout)] == [device_uuid]
    assert "tags" in table.stdout and "beta, kitchen" in table.stdout
    assert retagged.returncode == 0 and "attic, kitchen" in retagged.stdout
    assert json.loads(as_json.stdout)["tags"] == ["attic", "kitchen"]


def test_bad_tags_are_one_red_line_and_change_nothing(fleet: LocalFleet, tmp_path: Path):
    with fleet.client() as client:
        device = client.register_device(device_name="pi", tags=["kitchen"])
    uuid_text = str(device.device_uuid)

    assert_one_red_line(
        javia(fleet, "devices", "tag", uuid_text, "--add", "Kitchen!", "--remove", "kitchen"),
        "--add",
        "'Kitchen!'",
        "lower-case letters",
    )
    assert_one_red_line(
        javia(fleet, "devices", "list", "--tag", "no spaces"), "'no spaces'", "lower-case"
    )
    with pytest.raises(FleetError) as refused:
        _register(fleet, tmp_path / "bad-pi", "--api-key", fleet.api_key, "--tag", "UPPER")
    assert "'UPPER' is not valid" in str(refused.value) and "Traceback" not in str(refused.value)
    with fleet.client() as client:
        assert client.get_device(uuid_text).tags == ["kitchen"]
        assert [d.device_name for d in client.list_devices()] == ["pi"]


def test_publish_by_tag_targets_tagged_devices_and_refuses_an_unknown_tag(
    fleet: LocalFleet, app_dir: Path
):
    with fleet.client() as client:
        kitchen = client.register_device(device_name="kitchen-pi", tags=["kitchen"])
        attic = client.register_device(device_name="attic-pi", tags=["attic"])
    publish = (
        "publish",
        str(app_dir),
        "--type",
        "scheduled",
        "--key",
        str(fleet.private_key_path),
        "--yes",
    )

    unknown = javia(fleet, *publish, "--version", "v1.1.0", "--tag", "garden")
    malformed = javia(fleet, *publish, "--version", "v1.1.0", "--tag", "Garden")
    dry = javia(fleet, *publish, "--version", "v1.1.0", "--tag", "kitchen", "--dry-run", "--json")
    published = javia(fleet, *publish, "--version", "v1.1.0", "--tag", "kitchen", "--json")
    plan = javia(fleet, "updates", "plan", "v1.1.0", "--json")

    assert_one_red_line(unknown, "unknown tag garden: no device has it")
    assert_one_red_line(malformed, "--tag", "'Garden'", "lower-case")
    reasons = {entry["device_uuid"]: entry["reason"] for entry in json.loads(dry.stdout)}
    assert reasons[str(kitchen.device_uuid)].startswith("tagged kitchen; ")
    assert reasons[str(attic.device_uuid)] == "not tagged kitchen"
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["status_counts"] == {"pending": 1}
    entries = {entry["device_uuid"]: entry for entry in json.loads(plan.stdout)}
    assert entries[str(kitchen.device_uuid)]["gets_row"] is True
    assert entries[str(attic.device_uuid)]["reason"] == "not tagged kitchen"
    with fleet.client() as client:
        assert [update.version for update in client.list_updates()] == ["v1.1.0"]
