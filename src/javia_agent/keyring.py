"""Apply the key rotation a committed package carries to the device's keyring.

A signed manifest may carry ``keyring`` changes
(:class:`javia_core.manifest.KeyringChanges`): public keys to trust from
now on and key ids to stop trusting. The agent applies them with
:func:`apply_keyring_changes` only **after it committed** the package, whose
signature it verified with a key already in the keyring. So a new key becomes
trusted through an update signed by an old one, and an old key is retired by
an update signed by a new one; a device is never left without a key it can
verify the next update with (docs/security.md, "Key rotation").

The rules, each checked before anything is written:

- the package's signing key (``signed_by``) must be in the keyring now: the
  changes ride on a signature this device trusted;
- the signing key itself is never retired by its own package;
- the keyring never ends up empty.

Writes are crash-safe and idempotent: each new key is written to a temporary
file, fsynced and renamed to ``<keyring_dir>/<key id>.pub``, keys are added
before any is removed, and the directory is fsynced after each step. Applying
the same changes twice (say, after a power loss during commit) changes
nothing the second time.

Imports only what a device installs (``cryptography``, ``javia_core``
modules).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from javia_agent._fs import atomic_write, fsync_directory
from javia_core.errors import SigningKeyError
from javia_core.keys import PUBLIC_KEY_MODE, PUBLIC_KEY_SUFFIX, load_keyring, load_public_key
from javia_core.manifest import Manifest, Signature, key_id_for, verify_manifest

__all__ = [
    "KeyringChangeError",
    "KeyringUpdate",
    "apply_keyring_changes",
    "apply_package_keyring_changes",
    "plan_keyring_changes",
]

logger = logging.getLogger(__name__)


class KeyringChangeError(SigningKeyError):
    """A package's keyring changes are refused; the keyring was left as it was."""


@dataclass(frozen=True)
class KeyringUpdate:
    """What :func:`apply_keyring_changes` did (or, from :func:`plan_keyring_changes`, would do).

    Attributes:
        added: key ids newly written to the keyring, sorted.
        retired: key ids removed from the keyring, sorted.
        trusted: every key id trusted afterwards, sorted.
    """

    added: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the keyring changes (a key was added or retired)."""
        return bool(self.added or self.retired)


def plan_keyring_changes(
    keyring: Mapping[str, Ed25519PublicKey], manifest: Manifest, signed_by: str
) -> KeyringUpdate:
    """Check a package's keyring changes against the current keyring, without writing.

    Args:
        keyring: the keys trusted now, by key id.
        manifest: the verified manifest of the committed package.
        signed_by: the key id that signed it (from ``manifest.sig``).

    Returns:
        The keys that would be added and retired, and the resulting keyring.

    Raises:
        KeyringChangeError: ``signed_by`` is not trusted now, the changes would
            retire ``signed_by``, or they would leave no trusted key.
    """
    changes = manifest.keyring
    trusted = set(keyring)
    if changes is None:
        return KeyringUpdate(trusted=tuple(sorted(trusted)))
    if signed_by not in trusted:
        raise KeyringChangeError(
            f"the package was signed by key {signed_by}, which this device does not trust: "
            "refusing its keyring changes"
        )
    if signed_by in changes.retire:
        raise KeyringChangeError(
            f"the package would retire key {signed_by}, the key that signed it: refusing its "
            "keyring changes (retire a key with a package signed by its successor)"
        )
    added = set(changes.added_keys()) - trusted
    retired = set(changes.retire) & trusted
    after = (trusted | added) - retired
    if not after:  # pragma: no cover - signed_by always stays; kept as a second line of defence
        raise KeyringChangeError("the keyring changes would leave no trusted key: refusing them")
    return KeyringUpdate(
        added=tuple(sorted(added)), retired=tuple(sorted(retired)), trusted=tuple(sorted(after))
    )


def _pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def apply_keyring_changes(keyring_dir: Path, manifest: Manifest, signed_by: str) -> KeyringUpdate:
    """Apply ``manifest.keyring`` to the keyring directory; call after the commit only.

    Args:
        keyring_dir: the device's keyring, a directory of ``*.pub`` files
            (default ``/etc/javia/keys``).
        manifest: the manifest of the package just committed, whose signature
            was verified against this keyring.
        signed_by: the key id that signed it.

    Returns:
        What changed. A manifest without ``keyring`` changes nothing.

    Raises:
        KeyringChangeError: the changes are refused (see
            :func:`plan_keyring_changes`); nothing was written.
        SigningKeyError: the keyring directory cannot be read, or a key file
            in it does not parse.
        OSError: a key file cannot be written or removed; keys already added
            stay (adding first means the device still trusts every key it
            trusted before).
    """
    keyring_dir = Path(keyring_dir)
    if manifest.keyring is None:
        return KeyringUpdate(trusted=tuple(sorted(load_keyring(keyring_dir))))
    current = load_keyring(keyring_dir)
    plan = plan_keyring_changes(current, manifest, signed_by)
    new_keys = manifest.keyring.added_keys()
    for key_id in plan.added:
        atomic_write(
            keyring_dir / f"{key_id}{PUBLIC_KEY_SUFFIX}",
            _pem(new_keys[key_id]),
            mode=PUBLIC_KEY_MODE,
        )
        logger.info("keyring: now trusting key %s (added by %s)", key_id, manifest.version)
    if plan.retired:
        retired = set(plan.retired)
        for path in sorted(keyring_dir.glob(f"*{PUBLIC_KEY_SUFFIX}")):
            if path.is_file() and key_id_for(load_public_key(path)) in retired:
                path.unlink()
                logger.info("keyring: retired %s (by %s)", path.name, manifest.version)
        fsync_directory(keyring_dir)
    return plan


def apply_package_keyring_changes(
    keyring_dir: Path, manifest_bytes: bytes, signature_bytes: bytes
) -> KeyringUpdate:
    """Verify a committed package's metadata against the keyring again, then apply its changes.

    For the installer's commit step, which may run again after a restart
    (the parsed manifest is then no longer in memory): the signature is checked
    with :func:`javia_core.manifest.verify_manifest` (no version rule: the
    package is the running one by now).

    Args:
        keyring_dir: the device's keyring directory.
        manifest_bytes: the committed package's exact ``manifest.json`` bytes.
        signature_bytes: its ``manifest.sig`` bytes.

    Returns:
        What changed.

    Raises:
        SignatureError: the signature no longer verifies with the keyring.
        KeyringChangeError, SigningKeyError, OSError: see :func:`apply_keyring_changes`.
    """
    manifest = verify_manifest(manifest_bytes, signature_bytes, load_keyring(Path(keyring_dir)))
    signed_by = Signature.from_bytes(signature_bytes).key_id
    return apply_keyring_changes(keyring_dir, manifest, signed_by)
