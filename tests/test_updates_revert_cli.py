"""``javia updates revert`` through the CLI against a real server process.

A fleet went v1.0.0 → v1.1.0 (completed everywhere); v1.2.0 is bad. The revert
publishes v1.2.1 with v1.1.0's content, signed with the operator's key, to the
devices running (or installing) v1.2.0 only, and cancels v1.2.0's rollout.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from javia_core.keys import load_public_key
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_devtools.demo import javia_command
from javia_updates.admin_client import AdminClient
from javia_updates.keys import KeyPairPaths, generate_keypair, load_private_key
from javia_updates.packaging import build_package
from javia_updates.repackaging import unpack_payload, verify_downloaded_package
from revert_helpers import HttpFleet
from shared_helpers import isolate_javia_environment, server_process

API_KEY = "revert-admin-key-0123456789"


@dataclass
class RevertFleet:
    url: str
    keys: KeyPairPaths
    client: AdminClient
    fleet: HttpFleet
    apps: dict[str, Path]
    ids: dict[str, int]
    devices: dict[str, str]

    def publish(self, version: str, files: dict[str, tuple[bytes, int]], targets=None) -> int:
        app = self.apps.setdefault(version, self.apps["root"] / version)
        for path, (data, mode) in files.items():
            target = app / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        built = build_package(
            app,
            self.apps["root"] / f"package-{version}",
            version=Version.parse(version),
            update_type=UpdateType.URGENT,
            description=f"release {version}",
            system_packages=(),
            private_key=load_private_key(self.keys.private_path),
            now=datetime.now(UTC),
            app_name="assistant",
            write_version_file=False,
        )
        update = self.client.publish(
            manifest_path=built.manifest_path,
            signature_path=built.signature_path,
            payload_path=built.payload_path,
            targets=targets,
        )
        self.ids[version] = update.id
        return update.id


def release_files(version: str) -> dict[str, tuple[bytes, int]]:
    return {
        "VERSION": (f"{version}\n".encode(), 0o644),
        "assistant.py": (f"print('assistant {version}')\n".encode(), 0o644),
        "bin/start": (f"#!/bin/sh\necho {version}\n".encode(), 0o755),
    }


def javia(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    environment.update({"JAVIA_SERVER_URL": url, "JAVIA_API_KEY": API_KEY, "COLUMNS": "160"})
    return subprocess.run(
        [*javia_command(), *args],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def assert_one_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RevertFleet]:
    isolate_javia_environment(monkeypatch, tmp_path)
    keys = generate_keypair(tmp_path / "keys")
    with (
        server_process(tmp_path / "server", API_KEY) as (url, _log),
        AdminClient(url, API_KEY) as client,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        yield RevertFleet(
            url, keys, client, HttpFleet(http, {"X-API-Key": API_KEY}), {"root": tmp_path}, {}, {}
        )


@pytest.fixture
def bad_release(fleet: RevertFleet) -> RevertFleet:
    """a, b, c, d went v1.0.0 → v1.1.0; a and b run v1.2.0, c installs it, d never got it."""
    fleet.publish("v1.0.0", release_files("v1.0.0"))
    for name in "abcd":
        fleet.devices[name] = fleet.fleet.register(name, "v1.0.0")
    v110 = fleet.publish("v1.1.0", release_files("v1.1.0"))
    for device in fleet.devices.values():
        fleet.fleet.install(device, v110, "v1.1.0")
    targets = [fleet.devices[name] for name in "abc"]
    v120 = fleet.publish("v1.2.0", release_files("v1.2.0"), targets=targets)
    for name in "ab":
        fleet.fleet.install(fleet.devices[name], v120, "v1.2.0")
    fleet.fleet.report(fleet.devices["c"], v120, "downloading", "installing")
    return fleet


def revert_bad_release(fleet: RevertFleet) -> subprocess.CompletedProcess[str]:
    return javia(
        "updates",
        "revert",
        "v1.2.0",
        "--reason",
        "assistant crashes on start",
        "--key",
        str(fleet.keys.private_path),
        "--yes",
        "--json",
        url=fleet.url,
    )


def test_revert_publishes_the_healthy_content_as_a_new_signed_version(
    bad_release: RevertFleet, tmp_path: Path
):
    fleet = bad_release
    result = revert_bad_release(fleet)

    for step in (
        "last healthy release is v1.1.0",
        "verified v1.1.0",
        "built and signed v1.2.1",
        "published v1.2.1",
    ):
        assert step in result.stderr
    published = fleet.client.get_update("v1.2.1")
    affected = {fleet.devices[name] for name in "abc"}
    assert published.update_type == "urgent"
    assert {str(device) for device in published.targets or ()} == affected

    download = fleet.client.download_package("v1.2.1", tmp_path / "v1.2.1")
    manifest = verify_downloaded_package(download, load_public_key(fleet.keys.public_path))
    assert manifest.version == "v1.2.1"
    unpacked = tmp_path / "v1.2.1-content"
    unpack_payload(download / "payload.tar.gz", manifest, unpacked)
    expected = release_files("v1.1.0") | {"VERSION": (b"v1.2.1\n", 0o644)}
    assert {
        path.relative_to(unpacked).as_posix(): (path.read_bytes(), path.stat().st_mode & 0o777)
        for path in unpacked.rglob("*")
        if path.is_file()
    } == expected


def test_revert_cancels_the_bad_rollout(bad_release: RevertFleet):
    result = revert_bad_release(bad_release)

    assert "but cancelling v1.2.0 failed" not in result.stderr
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["published"]["version"] == "v1.2.1"
    assert answer["cancelled"]["rollout"]["state"] == "cancelled"
    rollout = bad_release.client.get_update("v1.2.0").rollout
    assert rollout is not None and rollout.state == "cancelled"

    shown = javia("updates", "show", "v1.2.0", url=bad_release.url)
    assert shown.returncode == 0, shown.stderr
    assert "rollout: cancelled, phase 1 of 1 (100%) open" in shown.stdout
    assert "│ 1 of 1 " in shown.stdout and "█" in shown.stdout
    assert "exposed (started this update)" in shown.stdout


def test_revert_without_a_healthy_earlier_release_is_one_line_and_publishes_nothing(
    fleet: RevertFleet,
):
    device = fleet.fleet.register("a", "v1.0.0")  # came with v1.0.0: no row proves it healthy
    bad = fleet.publish("v1.1.0", release_files("v1.1.0"))
    fleet.fleet.install(device, bad, "v1.1.0")

    result = javia(
        "updates",
        "revert",
        "v1.1.0",
        "--key",
        str(fleet.keys.private_path),
        "--yes",
        url=fleet.url,
    )

    assert_one_clean_error(result, "no earlier release completed on the devices running v1.1.0")
    assert [update.version for update in fleet.client.list_updates()] == ["v1.1.0"]


def test_revert_without_yes_and_without_a_terminal_publishes_nothing(bad_release: RevertFleet):
    result = javia(
        "updates",
        "revert",
        "v1.2.0",
        "--key",
        str(bad_release.keys.private_path),
        url=bad_release.url,
    )

    assert_one_clean_error(result, "--yes")
    assert bad_release.client.list_updates(limit=1)[0].version == "v1.2.0"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("1.2.0",), "vX.Y.Z"),
        (("v1.2.0", "--type", "weekly"), "weekly"),
        (("v1.2.0", "--key", "/nonexistent/key.pem"), "not found"),
        (("v1.2.0", "--reason", "two\nlines"), "--reason contains the control character U+000A"),
    ],
)
def test_revert_bad_arguments_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str):
    result = javia("updates", "revert", *args, url="http://127.0.0.1:9")
    assert_one_clean_error(result, needle)


def revert_in_process(fleet: RevertFleet, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``javia updates revert v1.2.0 --yes`` in this process (no terminal), as the operator sees it."""
    from typer.testing import CliRunner

    from javia_cli.main import app

    monkeypatch.setenv("JAVIA_SERVER_URL", fleet.url)
    monkeypatch.setenv("JAVIA_API_KEY", API_KEY)
    return CliRunner().invoke(
        app, ["updates", "revert", "v1.2.0", "--key", str(fleet.keys.private_path), "--yes"]
    )


def test_a_second_revert_is_refused_and_publishes_nothing(
    bad_release: RevertFleet, monkeypatch: pytest.MonkeyPatch
):
    first = revert_in_process(bad_release, monkeypatch)
    assert first.exit_code == 0, first.output
    assert "\n\n" not in first.output  # no blank line left by the upload's progress bar

    again = revert_bad_release(bad_release)

    assert_one_clean_error(
        again, "v1.2.0 was already reverted/superseded by v1.2.1 (published ", "updates show v1.2.1"
    )
    assert [u.version for u in bad_release.client.list_updates(limit=1)] == ["v1.2.1"]


def test_the_loser_of_two_reverts_racing_is_told_which_version_won(
    bad_release: RevertFleet, monkeypatch: pytest.MonkeyPatch
):
    fleet = bad_release
    real = AdminClient.download_package

    def download_package(client: AdminClient, *args: Any, **kwargs: Any) -> Any:
        if "v1.2.1" not in fleet.ids:  # the winner publishes while the loser builds
            targets = [fleet.devices[name] for name in "abc"]
            fleet.publish("v1.2.1", release_files("v1.1.0"), targets=targets)
        return real(client, *args, **kwargs)

    monkeypatch.setattr(AdminClient, "download_package", download_package)
    result = revert_in_process(fleet, monkeypatch)

    assert result.exit_code == 1, result.output
    assert "v1.2.0 was already reverted/superseded by v1.2.1" in result.output
    assert "publish a higher version" not in result.output
    assert "\n\n" not in result.output
    assert [u.version for u in fleet.client.list_updates(limit=1)] == ["v1.2.1"]
