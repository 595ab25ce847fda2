"""A signed package whose tree is 1,000 directories deep, and the debris of one (issue 11).

Such a package used to be accepted (its signature and hashes are right) and
crashed the agent's recursive tree removal (``shutil.rmtree`` hits Python's
recursion limit): a refused install left a half-built staging directory that
every later command tripped on, an accepted one broke the next clean-up. Now
the manifest's path bounds refuse it before anything is written, and every
removal of an agent-owned tree is iterative, so leftover debris of any depth
never blocks a later command.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from javia_agent.cli import app
from javia_agent.config import AgentConfig, write_config, write_token_file
from javia_agent.installer import InstallResult
from javia_core.manifest import canonical_json, sign_manifest
from javia_updates.packaging import BuiltPackage

from .helpers import Device, PackageFactory, Signer, deep_tree, make_installer

runner = CliRunner()
DEPTH = 1000
DEEP_PATH = "/".join(["deep"] * DEPTH) + "/leaf.txt"


def deep_package(base: BuiltPackage, out: Path, signer: Signer, version: str) -> Path:
    """``base`` plus one file ``DEPTH`` directories deep, signed by the trusted key.

    Written by hand (the packaging code refuses such a tree): the archive is
    ``base``'s members plus the deep file; the manifest lists it with its
    right size and SHA-256, so only the path bounds can refuse it.
    """
    out.mkdir(parents=True)
    data = json.loads(base.manifest_bytes)
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(base.payload_path, "r:gz") as archive:
        for member in archive.getmembers():
            extracted = archive.extractfile(member) if member.isfile() else None
            members.append((member, extracted.read() if extracted else b""))
    leaf = b"a leaf at the bottom of a very deep tree\n"
    info = tarfile.TarInfo(DEEP_PATH)
    info.size, info.mode, info.mtime = len(leaf), 0o644, 0
    members.append((info, leaf))
    payload = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=payload, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for member, content in members:
            archive.addfile(member, io.BytesIO(content) if member.isfile() else None)
    payload_bytes = payload.getvalue()
    (out / "payload.tar.gz").write_bytes(payload_bytes)
    data["version"] = version
    data["files"] = sorted(
        [
            *data["files"],
            {
                "path": DEEP_PATH,
                "sha256": hashlib.sha256(leaf).hexdigest(),
                "size": len(leaf),
                "mode": 0o644,
            },
        ],
        key=lambda item: item["path"],
    )
    data["unpacked_size"] += len(leaf)
    data["archive"] = {
        "name": "payload.tar.gz",
        "sha256": hashlib.sha256(payload_bytes).hexdigest(),
        "size": len(payload_bytes),
    }
    manifest_bytes = canonical_json(data)
    (out / "manifest.json").write_bytes(manifest_bytes)
    (out / "manifest.sig").write_bytes(sign_manifest(manifest_bytes, signer.private_key).to_bytes())
    return out


def deep_directory(root: Path, depth: int = DEPTH) -> None:
    """``root/deep/.../leaf.txt`` ``depth`` levels deep, as an older agent left it."""
    deep_tree(root, depth)


def _config(tmp_path: Path, signer: Signer) -> Path:
    config = AgentConfig(
        server_url="http://127.0.0.1:9",
        device_uuid="00000000-0000-0000-0000-0000000000d2",
        token_file=tmp_path / "etc" / "token",
        install_root=tmp_path / "opt" / "app",
        state_dir=tmp_path / "var",
        keyring_dir=signer.keyring_dir,
        service_mode="command",
        start_command=[sys.executable, "app.py"],
        app_env={"TEST_APP_STATUS": str(tmp_path / "status.json")},
        health_seconds=0.5,
    )
    path = tmp_path / "etc" / "agent.toml"
    write_config(config, path)
    write_token_file(config.token_file, "device-token-for-deep-tests")
    return path


def _stop_app(config_path: Path) -> None:
    from javia_agent.agent import build_service
    from javia_agent.config import load_config

    build_service(load_config(config_path)).stop()


def _one_red_line(output: str, words: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert words in lines[0] and "Traceback" not in output, output


def test_verify_and_install_refuse_a_signed_1000_deep_package_and_the_next_command_works(
    tmp_path: Path, signer: Signer, make_package: PackageFactory
) -> None:
    package = deep_package(make_package("v1.1.0"), tmp_path / "deep-pkg", signer, "v1.1.0")
    config = _config(tmp_path, signer)
    releases = tmp_path / "opt" / "app" / "releases"
    try:
        verify = runner.invoke(app, ["verify", str(package), "--keyring", str(signer.keyring_dir)])
        assert verify.exit_code == 1, verify.output
        _one_red_line(verify.output, "components deep (at most 32)")

        install = runner.invoke(app, ["install", str(package), "--config", str(config)])
        assert install.exit_code == 1, install.output
        _one_red_line(install.output, "components deep (at most 32)")
        assert not releases.exists() or not any(releases.iterdir())

        # No crash loop: the next commands work.
        good = runner.invoke(
            app, ["install", str(make_package("v1.2.0").directory), "--config", str(config)]
        )
        assert good.exit_code == 0, good.output
        status = runner.invoke(app, ["status", "--json", "--config", str(config)])
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["current_version"] == "v1.2.0"
    finally:
        _stop_app(config)


def test_deep_debris_left_by_an_older_agent_never_blocks_a_later_command(
    tmp_path: Path, signer: Signer, make_package: PackageFactory
) -> None:
    config = _config(tmp_path, signer)
    releases = tmp_path / "opt" / "app" / "releases"
    try:
        first = runner.invoke(
            app, ["install", str(make_package("v1.0.0").directory), "--config", str(config)]
        )
        assert first.exit_code == 0, first.output
        # A refused install's half-built staging directory, and an accepted deep
        # release that is no longer current (both as an older agent left them).
        deep_directory(releases / ".staging-v1.1.0-0011223344556677")
        deep_directory(releases / "v0.9.0")
        (releases / "v0.9.0" / "app.py").write_text("old")

        for version in ("v1.2.0", "v1.3.0"):  # each install cleans up, then prunes
            result = runner.invoke(
                app,
                ["install", str(make_package(version).directory), "--config", str(config)],
            )
            assert result.exit_code == 0, result.output
        assert sorted(path.name for path in releases.iterdir()) == ["v1.2.0", "v1.3.0"]
    finally:
        _stop_app(config)


@pytest.fixture
def running(device: Device, signer: Signer, make_package: PackageFactory) -> Device:
    outcome = make_installer(device, signer).install_from_directory(
        make_package("v1.0.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED
    device.wait_for_app("v1.0.0")
    return device


def test_recovery_removes_deep_debris_and_the_device_keeps_running(
    running: Device, signer: Signer, make_package: PackageFactory
) -> None:
    releases = running.paths.releases_dir
    deep_directory(releases / ".staging-v1.1.0-8899aabbccddeeff")
    assert make_installer(running, signer).recover() is None
    assert [path.name for path in releases.iterdir()] == ["v1.0.0"]
    outcome = make_installer(running, signer).install_from_directory(
        make_package("v1.1.0").directory
    )
    assert outcome.result == InstallResult.COMPLETED
    running.wait_for_app("v1.1.0")
