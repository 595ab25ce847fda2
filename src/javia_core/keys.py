"""Reading Ed25519 public keys and keyrings (DESIGN.md section 3, "Keys"). Pure of server code.

What a device needs to trust packages, and nothing of the operator's key
generation (:mod:`javia_updates.keys`):

- A public key is PEM SubjectPublicKeyInfo in ``<name>.pub``.
- A key id is the first 16 hex digits of SHA-256 of the raw 32-byte public key
  (:func:`javia_core.manifest.key_id_for`).
- A keyring is a directory of ``*.pub`` files (agent default
  ``/etc/javia/keys``). A missing or empty keyring trusts nothing, and
  :func:`javia_core.manifest.verify_manifest` then refuses every package.

Needs only ``cryptography``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from javia_core.errors import SigningKeyError
from javia_core.manifest import key_id_for

__all__ = [
    "PUBLIC_KEY_MODE",
    "PUBLIC_KEY_SUFFIX",
    "load_keyring",
    "load_public_key",
    "read_key_file",
]

PUBLIC_KEY_SUFFIX = ".pub"
PUBLIC_KEY_MODE = 0o644
# A PEM Ed25519 key is a few hundred bytes; anything far larger is not a key file.
_MAX_KEY_FILE_BYTES = 64 * 1024


def read_key_file(path: Path, what: str) -> bytes:
    """The bytes of a PEM key file, at most 64 KiB.

    Raises:
        SigningKeyError: the file is missing, unreadable, a directory, too large or not PEM.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningKeyError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise SigningKeyError(f"{what} file {path} is a directory, expected a PEM file") from None
    except OSError as error:
        raise SigningKeyError(f"cannot read {what} file {path}: {error.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES or b"-----BEGIN " not in data:
        raise SigningKeyError(f"{what} file {path} is not a PEM file (expected '-----BEGIN ...')")
    return data


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM SubjectPublicKeyInfo file.

    Raises:
        SigningKeyError: the file is missing or unreadable, is not PEM, or holds
            a key that is not an Ed25519 public key.
    """
    data = read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise SigningKeyError(
            f"{path} holds a private key: a keyring must contain public keys only"
        )
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(
            f"{path} is not a valid PEM public key (expected an Ed25519 SubjectPublicKeyInfo)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"public key {path} is a {type(key).__name__.removesuffix('PublicKey')} key: "
            "javia verifies Ed25519 keys only"
        )
    return key


def load_keyring(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Load every ``*.pub`` file of ``directory``, keyed by key id.

    Args:
        directory: the keyring directory (agent default ``/etc/javia/keys``).

    Returns:
        Trusted public keys by key id. A missing directory gives an empty
        dict, with which verification refuses every package (fail closed).

    Raises:
        SigningKeyError: ``directory`` exists but is not a directory, or a
            ``*.pub`` file in it does not parse (the message names the file).
    """
    directory = Path(directory)
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise SigningKeyError(f"keyring {directory} is not a directory of *.pub files")
    keyring: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        if not path.is_file():
            continue
        key = load_public_key(path)
        keyring[key_id_for(key)] = key
    return keyring
