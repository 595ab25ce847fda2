"""Signing keys on disk and keyrings (DESIGN.md section 3, "Keys")."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from javia_core.errors import SignatureError, SigningKeyError
from javia_core.keys import load_keyring, load_public_key
from javia_core.manifest import sign_manifest, verify_manifest
from javia_updates.keys import generate_keypair, load_private_key


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_private_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        paths = generate_keypair(tmp_path / "keys")
    finally:
        os.umask(previous)
    assert mode_of(paths.private_path) == 0o600
    assert mode_of(paths.public_path) == 0o644
    assert paths.public_path.name == "javia-signing.pub"
    assert paths.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert paths.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_key_id_is_first_16_hex_of_sha256_of_the_raw_public_key(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path)
    public = load_public_key(paths.public_path)
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert len(raw) == 32
    assert paths.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert list(load_keyring(tmp_path)) == [paths.key_id]


def test_a_generated_key_signs_what_its_public_key_verifies(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path, name="operator")
    private = load_private_key(paths.private_path)
    signature = sign_manifest(b"manifest bytes", private)
    assert signature.key_id == paths.key_id
    # Raises InvalidSignature if the pair does not match.
    load_public_key(paths.public_path).verify(
        base64.b64decode(signature.signature), b"manifest bytes"
    )


def test_passphrase_protects_the_private_key(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path, passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in paths.private_path.read_bytes()
    with pytest.raises(SigningKeyError, match="encrypted: a passphrase is needed"):
        load_private_key(paths.private_path)
    with pytest.raises(SigningKeyError, match="wrong passphrase") as caught:
        load_private_key(paths.private_path, passphrase=b"battery staple")
    assert str(paths.private_path) in str(caught.value)
    key = load_private_key(paths.private_path, passphrase=b"correct horse")
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == load_public_key(
        paths.public_path
    ).public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_passphrase_given_for_an_unencrypted_key_is_reported(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path)
    with pytest.raises(SigningKeyError, match="not encrypted"):
        load_private_key(paths.private_path, passphrase=b"something")


def test_existing_keys_are_not_overwritten_unless_asked(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path)
    before = first.private_path.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keypair(tmp_path)
    assert first.private_path.read_bytes() == before
    # A lone public key of the same name also blocks generation.
    other = tmp_path / "other"
    other.mkdir()
    (other / "javia-signing.pub").write_text("keep me")
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keypair(other)
    assert (other / "javia-signing.pub").read_text() == "keep me"
    assert not (other / "javia-signing.pem").exists()

    second = generate_keypair(tmp_path, overwrite=True)
    assert second.key_id != first.key_id
    assert first.private_path.read_bytes() != before
    assert mode_of(second.private_path) == 0o600


def test_overwrite_tightens_a_loose_existing_file(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path)
    os.chmod(first.private_path, 0o666)
    second = generate_keypair(tmp_path, overwrite=True)
    assert mode_of(second.private_path) == 0o600


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", ".."])
def test_key_names_must_be_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(SigningKeyError, match="plain file name"):
        generate_keypair(tmp_path / "keys", name=name)
    assert not (tmp_path / "keys").exists()


def test_loading_explains_what_is_wrong_with_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_private_key(tmp_path / "missing.pem")
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")

    text = tmp_path / "notes.txt"
    text.write_text("not a key at all\n")
    with pytest.raises(SigningKeyError, match="not a PEM file"):
        load_private_key(text)
    with pytest.raises(SigningKeyError, match="not a PEM file"):
        load_public_key(text)

    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyError, match="not a valid PEM PKCS#8 private key"):
        load_private_key(broken)

    ecdsa = ec.generate_private_key(ec.SECP256R1())
    ec_private = tmp_path / "ec.pem"
    ec_private.write_bytes(ecdsa.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    ec_public = tmp_path / "ec.pub"
    ec_public.write_bytes(
        ecdsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SigningKeyError, match="Ed25519"):
        load_private_key(ec_private)
    with pytest.raises(SigningKeyError, match="Ed25519"):
        load_public_key(ec_public)

    paths = generate_keypair(tmp_path / "pair")
    with pytest.raises(SigningKeyError, match="holds a public key"):
        load_private_key(paths.public_path)
    with pytest.raises(SigningKeyError, match="holds a private key"):
        load_public_key(paths.private_path)


def test_missing_keyring_is_empty_and_verification_then_fails_closed(tmp_path: Path) -> None:
    keyring = load_keyring(tmp_path / "no-such-dir")
    assert keyring == {}
    key = Ed25519PrivateKey.generate()
    signature = sign_manifest(b"{}", key).to_bytes()
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_manifest(b"{}", signature, keyring)


def test_keyring_holds_every_pub_file_and_ignores_other_files(tmp_path: Path) -> None:
    one = generate_keypair(tmp_path / "one", name="alice")
    two = generate_keypair(tmp_path / "two", name="bob")
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "alice.pub").write_bytes(one.public_path.read_bytes())
    (ring / "bob.pub").write_bytes(two.public_path.read_bytes())
    (ring / "README").write_text("copy public keys here\n")
    (ring / "alice.pem").write_bytes(one.private_path.read_bytes())  # not a *.pub: ignored
    keyring = load_keyring(ring)
    assert set(keyring) == {one.key_id, two.key_id}


def test_a_keyring_file_that_does_not_parse_is_named(tmp_path: Path) -> None:
    (tmp_path / "good.pub").write_bytes(generate_keypair(tmp_path / "k").public_path.read_bytes())
    (tmp_path / "bad.pub").write_text(
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(SigningKeyError) as caught:
        load_keyring(tmp_path)
    assert "bad.pub" in str(caught.value)


def test_a_keyring_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("")
    with pytest.raises(SigningKeyError, match="not a directory"):
        load_keyring(file)
