"""The operator's Ed25519 signing key pair on disk (DESIGN.md section 3, "Keys").

Reading public keys and keyrings, which a device needs too, lives in
:mod:`javia_core.keys`.

- The private key is PEM PKCS#8, written with file mode 0600 from the moment
  the file exists (never created world-readable and tightened afterwards), and
  optionally encrypted with a passphrase.
- The public key is PEM SubjectPublicKeyInfo in ``<name>.pub``.
- A key id is the first 16 hex digits of SHA-256 of the raw 32-byte public key
  (:func:`javia_core.manifest.key_id_for`).
- A keyring is a directory of ``*.pub`` files (agent default
  ``/etc/javia/keys``). A missing or empty keyring trusts nothing, and
  :func:`javia_core.manifest.verify_manifest` then refuses every package.

This module is importable on a device: it needs only ``cryptography``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from javia_core.errors import SigningKeyError
from javia_core.keys import PUBLIC_KEY_MODE, PUBLIC_KEY_SUFFIX, read_key_file
from javia_core.manifest import key_id_for

__all__ = [
    "DEFAULT_KEY_NAME",
    "PRIVATE_KEY_SUFFIX",
    "KeyPairPaths",
    "generate_keypair",
    "load_private_key",
]

DEFAULT_KEY_NAME = "javia-signing"
PRIVATE_KEY_SUFFIX = ".pem"
PRIVATE_KEY_MODE = 0o600


@dataclass(frozen=True)
class KeyPairPaths:
    """Where :func:`generate_keypair` wrote a key pair, and its key id.

    Attributes:
        private_path: the PEM PKCS#8 private key (mode 0600); keep it on the
            operator's machine only.
        public_path: the PEM SubjectPublicKeyInfo public key (``<name>.pub``);
            copy it into every device's keyring.
        key_id: 16 lower-case hex digits identifying the key in ``manifest.sig``.
    """

    private_path: Path
    public_path: Path
    key_id: str


def _validate_name(name: str) -> None:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
    ):
        raise SigningKeyError(
            f"invalid key name {name[:80]!r}: expected a plain file name such as 'javia-signing'"
        )


def _write_new_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to a new file created with ``mode`` (never wider, even briefly)."""
    if overwrite:
        # Remove first, so that O_EXCL still guarantees we created the file and
        # its mode is the one given here (an existing 0644 file keeps its mode
        # when opened for writing).
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except FileExistsError:
        raise SigningKeyError(f"{path} already exists: refusing to overwrite a key") from None
    except OSError as error:
        raise SigningKeyError(f"cannot create {path}: {error.strerror}") from None
    try:
        # The umask may have narrowed the mode further; make it exactly `mode`.
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            descriptor = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if descriptor != -1:
            os.close(descriptor)


def generate_keypair(
    directory: Path,
    name: str = DEFAULT_KEY_NAME,
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> KeyPairPaths:
    """Create a new Ed25519 signing key pair in ``directory``.

    Writes ``<name>.pem`` (PEM PKCS#8 private key, created with mode 0600 via
    ``O_CREAT|O_EXCL``, encrypted with ``passphrase`` if given) and
    ``<name>.pub`` (PEM SubjectPublicKeyInfo, mode 0644). ``directory`` is
    created (mode 0700) if missing.

    Args:
        directory: where to write the two files.
        name: the file stem; a plain file name without path separators.
        passphrase: optional passphrase (bytes) protecting the private key;
            ``None`` or empty writes it unencrypted.
        overwrite: replace existing files of the same name.

    Returns:
        The paths written and the key id.

    Raises:
        SigningKeyError: ``name`` is not a plain file name, a file exists and
            ``overwrite`` is false, or the files cannot be written.
    """
    _validate_name(name)
    directory = Path(directory)
    private_path = directory / f"{name}{PRIVATE_KEY_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_KEY_SUFFIX}"
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise SigningKeyError(f"{path} already exists: refusing to overwrite a key")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise SigningKeyError(
            f"cannot create key directory {directory}: {error.strerror}"
        ) from None

    private_key = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    private_pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    public_key = private_key.public_key()
    public_pem = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    _write_new_file(private_path, private_pem, PRIVATE_KEY_MODE, overwrite)
    try:
        _write_new_file(public_path, public_pem, PUBLIC_KEY_MODE, overwrite)
    except SigningKeyError:
        private_path.unlink(missing_ok=True)
        raise
    return KeyPairPaths(
        private_path=private_path, public_path=public_path, key_id=key_id_for(public_key)
    )


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM PKCS#8 file.

    Args:
        path: the ``.pem`` file written by :func:`generate_keypair`.
        passphrase: the passphrase if the key is encrypted, else ``None``.

    Returns:
        The private key.

    Raises:
        SigningKeyError: the file is missing or unreadable, is not PEM, holds
            a key that is not Ed25519, is encrypted and no passphrase was
            given, or the passphrase is wrong.
    """
    data = read_key_file(path, "private key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise SigningKeyError(f"{path} holds a public key: expected the private key (.pem)")
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and not passphrase:
        raise SigningKeyError(f"private key {path} is encrypted: a passphrase is needed")
    if not encrypted and passphrase:
        # cryptography refuses a password for an unencrypted key; say so plainly.
        raise SigningKeyError(f"private key {path} is not encrypted, but a passphrase was given")
    try:
        key = load_pem_private_key(data, password=passphrase or None)
    except TypeError as error:
        raise SigningKeyError(f"cannot load private key {path}: {error}") from None
    except ValueError:
        if encrypted:
            raise SigningKeyError(f"wrong passphrase for private key {path}") from None
        raise SigningKeyError(
            f"{path} is not a valid PEM PKCS#8 private key (expected an Ed25519 key)"
        ) from None
    except UnsupportedAlgorithm as error:
        raise SigningKeyError(f"cannot load private key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"private key {path} is a {type(key).__name__.removesuffix('PrivateKey') or 'non-Ed25519'} "
            "key: javia signs with Ed25519 keys only"
        )
    return key
