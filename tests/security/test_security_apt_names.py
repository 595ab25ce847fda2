"""apt package names: Debian policy 5.6.1 names with an optional ``=version``, nothing that
apt could read as an option; refused at publish and, signed or not, on the device."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from javia_cli.main import app as javia_app
from javia_core.errors import ManifestError
from javia_core.manifest import canonical_json, sign_manifest, validate_apt_package

VALID = ["sox", "libasound2", "libc6=2.36-9+deb12u4", "g++", "python3.11", "lib32z1=1:1.2.13"]
HOSTILE = [
    "-oAPT::Get::AllowUnauthenticated=1",
    "--allow-unauthenticated",
    "-y",
    "sox --reinstall",
    "sox;reboot",
    "Sox",
    "s",
    "",
    "sox=",
    "sox=-1",
    "sox=1.0 -o",
    "../sox",
    "sox\n",
]


@pytest.mark.parametrize("name", VALID)
def test_debian_policy_names_are_accepted(name: str) -> None:
    assert validate_apt_package(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_names_that_are_not_debian_policy_names_are_refused(name: str) -> None:
    with pytest.raises(ManifestError, match="expected a Debian package name"):
        validate_apt_package(name)


def _signed_package(directory: Path, system_packages: list[str]) -> Path:
    """A package directory whose signed manifest lists ``system_packages`` (payload empty)."""
    key = Ed25519PrivateKey.generate()
    directory.mkdir(parents=True)
    payload = b""
    manifest = {
        "format": 1,
        "app": "assistant",
        "version": "v1.1.0",
        "created_at": "2027-03-01T00:00:00Z",
        "update_type": "scheduled",
        "description": "",
        "system_packages": system_packages,
        "files": [],
        "archive": {
            "name": "payload.tar.gz",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": 0,
        },
        "unpacked_size": 0,
    }
    data = canonical_json(manifest)
    (directory / "manifest.json").write_bytes(data)
    (directory / "manifest.sig").write_bytes(sign_manifest(data, key).to_bytes())
    (directory / "payload.tar.gz").write_bytes(payload)
    keyring = directory.parent / "keys"
    keyring.mkdir()
    (keyring / "k.pub").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return keyring


def test_a_signed_manifest_with_an_option_as_package_is_refused_on_the_device(
    tmp_path: Path,
) -> None:
    keyring = _signed_package(tmp_path / "package", ["sox", "--allow-unauthenticated"])
    result = CliRunner().invoke(
        javia_app, ["agent", "verify", str(tmp_path / "package"), "--keyring", str(keyring)]
    )
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "system_packages" in lines[0] and "Debian package name" in lines[0]


def test_publish_refuses_an_option_as_package_before_writing(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "VERSION").write_text("v1.0.0\n")
    (app / "app.py").write_text('print("hello")\n')
    runner = CliRunner()
    key_dir = tmp_path / "keys"
    assert runner.invoke(javia_app, ["keys", "generate", "-o", str(key_dir)]).exit_code == 0
    result = runner.invoke(
        javia_app,
        ["publish", str(app), "--version", "v1.1.0", "--type", "scheduled",
         "--key", str(key_dir / "javia-signing.pem"), "--output", str(tmp_path / "out"),
         "--system-packages", "sox,-oDpkg::Options::=--force-confnew"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "Debian package name" in result.stderr
    assert not (tmp_path / "out").exists()
    assert (app / "VERSION").read_text() == "v1.0.0\n"  # not bumped
