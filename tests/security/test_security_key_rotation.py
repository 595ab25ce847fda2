"""Key rotation without bricking devices, with real packages and the real commands.

The flow (docs/security.md, "Key rotation"): ``javia keys rotate`` makes the
successor key; an update signed by the OLD key adds the new one
(``javia publish --add-key``); devices trust it once they committed that update;
an update signed by the NEW key retires the old one (``--retire-key``); from
then on a package signed by the old key is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from security_helpers import START
from typer.testing import CliRunner

from javia_agent.keyring import (
    KeyringChangeError,
    apply_keyring_changes,
    apply_package_keyring_changes,
)
from javia_agent.verification import verify_package_dir
from javia_cli.main import app as javia_app
from javia_core.errors import ManifestError, SignatureError
from javia_core.keys import load_keyring
from javia_core.manifest import (
    ArchiveInfo,
    FileEntry,
    KeyringChanges,
    Manifest,
    canonical_json,
    key_id_for,
    sign_manifest,
    verify_manifest,
)
from javia_core.models import UpdateType
from javia_core.package_reader import read_package_dir
from javia_core.versioning import Version


def javia(*args: str) -> tuple[int, str, str]:
    """Run ``javia ARGS`` in-process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(javia_app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pi_client"
    root.mkdir()
    (root / "VERSION").write_text("v1.0.0\n")
    (root / "assistant.py").write_text("print('hello')\n")
    return root


@pytest.fixture
def old_key(tmp_path: Path) -> Path:
    code, _out, err = javia("keys", "generate", "--output", str(tmp_path / "keys"), "--name", "old")
    assert code == 0, err
    return tmp_path / "keys" / "old.pem"


@pytest.fixture
def device_keyring(tmp_path: Path, old_key: Path) -> Path:
    """A device's keyring that trusts the old key only (as shipped)."""
    keyring = tmp_path / "device" / "keys"
    keyring.mkdir(parents=True)
    shutil.copy(old_key.with_suffix(".pub"), keyring / "javia-signing.pub")
    return keyring


def publish(app_dir: Path, output: Path, version: str, key: Path, *extra: str) -> dict:
    code, out, err = javia(
        "publish", str(app_dir), "--version", version, "--type", "scheduled",
        "--key", str(key), "--output", str(output), "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def device_installs(package: Path, keyring: Path, running: str) -> str:
    """What the agent does with a package directory: verify it all, then, once committed,
    apply its keyring changes. Returns the new running version."""
    verified = verify_package_dir(
        package, load_keyring(keyring), current_version=Version.parse(running)
    )
    manifest_bytes, signature_bytes, _ = read_package_dir(package)
    apply_package_keyring_changes(keyring, manifest_bytes, signature_bytes)
    return verified.manifest.version


def agent_verify(package: Path, keyring: Path, running: str) -> tuple[int, str, str]:
    return javia(
        "agent", "verify", str(package), "--keyring", str(keyring), "--current-version", running
    )


def test_the_whole_rotation_flow_with_real_packages(
    tmp_path: Path, app_dir: Path, old_key: Path, device_keyring: Path
) -> None:
    code, out, err = javia("keys", "rotate", "--key", str(old_key), "--name", "new", "--json")
    assert code == 0, err
    rotation = json.loads(out)
    old_id, new_id = rotation["current_key_id"], rotation["new_key_id"]
    new_key = Path(rotation["private_key"])
    assert new_key == old_key.parent / "new.pem" and (new_key.stat().st_mode & 0o777) == 0o600
    assert old_id != new_id
    assert any("--add-key" in step for step in rotation["steps"])
    assert any(f"--retire-key {old_id}" in step for step in rotation["steps"])
    assert set(load_keyring(device_keyring)) == {old_id}

    # 1. An update signed by the OLD key introduces the new key.
    introducing = tmp_path / "v1.1.0"
    built = publish(app_dir, introducing, "v1.1.0", old_key, "--add-key", rotation["public_key"])
    assert len(built["manifest"]["keyring"]["add"]) == 1
    assert agent_verify(introducing, device_keyring, "v1.0.0")[0] == 0
    running = device_installs(introducing, device_keyring, "v1.0.0")
    assert set(load_keyring(device_keyring)) == {old_id, new_id}

    # 2. An update signed by the NEW key is accepted and retires the old one.
    retiring = tmp_path / "v1.2.0"
    publish(app_dir, retiring, "v1.2.0", new_key, "--retire-key", old_id)
    code, out, err = agent_verify(retiring, device_keyring, running)
    assert code == 0, err
    assert f"signed by key {new_id}" in out
    running = device_installs(retiring, device_keyring, running)
    assert set(load_keyring(device_keyring)) == {new_id}
    assert running == "v1.2.0"

    # 3. From now on the old key is refused, with one line saying why; the new one works.
    stale = tmp_path / "v1.3.0-old"
    publish(app_dir, stale, "v1.3.0", old_key)
    code, out, err = agent_verify(stale, device_keyring, running)
    assert code == 1
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: package signed by key {old_id}, which is not in the keyring"
    ]
    fresh = tmp_path / "v1.3.0-new"
    publish(app_dir, fresh, "v1.3.0", new_key)
    assert agent_verify(fresh, device_keyring, running)[0] == 0


def test_a_device_that_missed_the_introducing_update_refuses_the_new_key_until_it_has_it(
    tmp_path: Path, app_dir: Path, old_key: Path, device_keyring: Path
) -> None:
    code, out, err = javia("keys", "rotate", "--key", str(old_key), "--name", "new", "--json")
    assert code == 0, err
    rotation = json.loads(out)
    new_key = Path(rotation["private_key"])
    introducing, retiring = tmp_path / "v1.1.0", tmp_path / "v1.2.0"
    publish(app_dir, introducing, "v1.1.0", old_key, "--add-key", rotation["public_key"])
    publish(app_dir, retiring, "v1.2.0", new_key, "--retire-key", rotation["current_key_id"])
    with pytest.raises(SignatureError, match="not in the keyring"):
        device_installs(retiring, device_keyring, "v1.0.0")
    assert set(load_keyring(device_keyring)) == {rotation["current_key_id"]}  # unchanged
    # Catching up in order works: packages are cumulative, the chain of trust too.
    running = device_installs(introducing, device_keyring, "v1.0.0")
    assert device_installs(retiring, device_keyring, running) == "v1.2.0"


def test_publish_refuses_to_retire_the_key_that_signs_the_package(
    tmp_path: Path, app_dir: Path, old_key: Path
) -> None:
    own_id = key_id_for(_private(old_key).public_key())
    output = tmp_path / "package"
    code, _out, err = javia(
        "publish", str(app_dir), "--version", "v1.1.0", "--type", "scheduled",
        "--key", str(old_key), "--output", str(output), "--retire-key", own_id,
    )  # fmt: skip
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot retire key {own_id}" in lines[0]
    assert not output.exists() or not any(output.iterdir())
    assert (app_dir / "VERSION").read_text() == "v1.0.0\n"


def test_publish_refuses_a_private_key_or_a_bad_key_id_as_keyring_changes(
    tmp_path: Path, app_dir: Path, old_key: Path
) -> None:
    code, _, err = javia(
        "publish", str(app_dir), "--version", "v1.1.0", "--type", "scheduled",
        "--key", str(old_key), "--output", str(tmp_path / "a"), "--add-key", str(old_key),
    )  # fmt: skip
    assert code == 1 and "holds a private key" in err
    code, _, err = javia(
        "publish", str(app_dir), "--version", "v1.1.0", "--type", "scheduled",
        "--key", str(old_key), "--output", str(tmp_path / "b"), "--retire-key", "not-a-key-id",
    )  # fmt: skip
    assert code == 1 and "16 lower-case hex digits" in err


# --------------------------------------------------------------------------- the device's rules


def _private(path: Path) -> Ed25519PrivateKey:
    from javia_updates.keys import load_private_key

    return load_private_key(path)


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def _manifest(keyring: KeyringChanges | None) -> Manifest:
    return Manifest(
        app="assistant",
        version="v1.1.0",
        created_at=START,
        update_type=UpdateType.SCHEDULED,
        files=(),
        archive=ArchiveInfo(sha256="0" * 64, size=0),
        unpacked_size=0,
        keyring=keyring,
    )


def _write_keyring(directory: Path, *keys: Ed25519PrivateKey) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for number, key in enumerate(keys):
        (directory / f"k{number}.pub").write_text(_pem(key))
    return directory


def test_the_device_refuses_to_retire_the_key_that_signed_the_package(tmp_path: Path) -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keyring = _write_keyring(tmp_path / "keys", signer, other)
    signer_id = key_id_for(signer.public_key())
    manifest = _manifest(KeyringChanges(retire=(signer_id,)))
    before = sorted(path.read_bytes() for path in keyring.iterdir())
    with pytest.raises(KeyringChangeError, match="the key that signed it"):
        apply_keyring_changes(keyring, manifest, signer_id)
    assert sorted(path.read_bytes() for path in keyring.iterdir()) == before


def test_the_device_refuses_changes_signed_by_a_key_it_does_not_trust(tmp_path: Path) -> None:
    trusted, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keyring = _write_keyring(tmp_path / "keys", trusted)
    manifest = _manifest(KeyringChanges(add=(_pem(stranger),)))
    with pytest.raises(KeyringChangeError, match="does not trust"):
        apply_keyring_changes(keyring, manifest, key_id_for(stranger.public_key()))
    assert set(load_keyring(keyring)) == {key_id_for(trusted.public_key())}


def test_a_device_with_no_keyring_gets_no_keys_from_a_package(tmp_path: Path) -> None:
    newcomer = Ed25519PrivateKey.generate()
    manifest = _manifest(KeyringChanges(add=(_pem(newcomer),)))
    with pytest.raises(KeyringChangeError):
        apply_keyring_changes(tmp_path / "absent", manifest, key_id_for(newcomer.public_key()))
    assert not (tmp_path / "absent").exists()


def test_applying_the_same_changes_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keyring = _write_keyring(tmp_path / "keys", old)
    old_id, new_id = key_id_for(old.public_key()), key_id_for(new.public_key())
    manifest = _manifest(KeyringChanges(add=(_pem(new),)))
    first = apply_keyring_changes(keyring, manifest, old_id)
    second = apply_keyring_changes(keyring, manifest, old_id)
    assert (first.added, second.added, second.changed) == ((new_id,), (), False)
    assert (keyring / f"{new_id}.pub").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in keyring.iterdir()) == sorted(["k0.pub", f"{new_id}.pub"])
    retire = _manifest(KeyringChanges(retire=(old_id,)))
    assert apply_keyring_changes(keyring, retire, new_id).retired == (old_id,)
    assert apply_keyring_changes(keyring, retire, new_id).changed is False
    assert set(load_keyring(keyring)) == {new_id}


#: ``manifest.json`` of this content as javia wrote it before the keyring field existed.
LEGACY_MANIFEST = (
    b'{"app":"assistant","archive":{"name":"payload.tar.gz","sha256":"'
    + b"0" * 64
    + b'","size":9},"created_at":"2027-03-10T12:00:00Z","description":"x","files":[{"mode":420,'
    b'"path":"a","sha256":"' + b"1" * 64 + b'","size":3}],"format":1,"system_packages":["sox"],'
    b'"unpacked_size":3,"update_type":"scheduled","version":"v1.1.0"}'
)


def test_a_manifest_without_keyring_changes_keeps_its_canonical_bytes() -> None:
    manifest = Manifest(
        app="assistant",
        version="v1.1.0",
        created_at=START,
        update_type=UpdateType.SCHEDULED,
        description="x",
        system_packages=("sox",),
        files=(FileEntry(path="a", sha256="1" * 64, size=3, mode=0o644),),
        archive=ArchiveInfo(sha256="0" * 64, size=9),
        unpacked_size=3,
    )
    assert manifest.to_bytes() == LEGACY_MANIFEST
    assert Manifest.from_bytes(LEGACY_MANIFEST).to_bytes() == LEGACY_MANIFEST
    assert Manifest.from_bytes(LEGACY_MANIFEST).keyring is None


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"add": ["-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]}, "public key"),
        ({"add": ["not a key"]}, "Ed25519 public key"),
        ({"retire": ["ABCDEF0123456789"]}, "16 lower-case hex digits"),
        ({"retire": ["0123456789abcdef"] * 2}, "listed twice"),
        ({}, "at least one key"),
        ({"retire": [f"{n:016x}" for n in range(9)]}, "at most 8"),
    ],
)
def test_signed_but_malformed_keyring_changes_are_refused(changes: dict, fragment: str) -> None:
    key = Ed25519PrivateKey.generate()
    value = json.loads(_manifest(None).to_bytes())
    value["keyring"] = changes
    data = canonical_json(value)
    signature = sign_manifest(data, key).to_bytes()
    with pytest.raises(ManifestError, match=fragment):
        verify_manifest(data, signature, {key_id_for(key.public_key()): key.public_key()})


def test_a_key_added_and_retired_at_once_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="both added and retired"):
        KeyringChanges(add=(_pem(key),), retire=(key_id_for(key.public_key()),))


def test_an_unencrypted_private_key_file_is_never_accepted_as_a_key_to_add(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    with pytest.raises(ValueError, match="public key"):
        KeyringChanges(add=(pem,))
