"""Package verification and safe extraction on the device (DESIGN.md section 3).

Skeleton: signatures are final; bodies are being filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_updates.manifest import Manifest
from javia_updates.versioning import Version

__all__ = [
    "VerifiedPackage",
    "verify_metadata",
    "verify_archive",
    "extract_payload",
    "check_payload",
    "verify_package_dir",
]


@dataclass(frozen=True)
class VerifiedPackage:
    """A manifest whose signature verified, and the key id that signed it."""

    manifest: Manifest
    key_id: str


def verify_metadata(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    keyring: Mapping[str, Ed25519PublicKey],
    *,
    current_version: Version | None,
    expected_version: str | None = None,
    expected_app: str | None = None,
) -> VerifiedPackage:
    """Verify signature, then anti-rollback and expected version/app."""
    raise NotImplementedError


def verify_archive(payload_path: Path, manifest: Manifest) -> None:
    """Check the payload's size and SHA-256 against the manifest."""
    raise NotImplementedError


def extract_payload(payload_path: Path, manifest: Manifest, destination: Path) -> None:
    """Verify and extract the payload into ``destination`` (which must not exist)."""
    raise NotImplementedError


def check_payload(payload_path: Path, manifest: Manifest) -> None:
    """Run every extraction check without writing anything."""
    raise NotImplementedError


def verify_package_dir(
    directory: Path,
    keyring: Mapping[str, Ed25519PublicKey],
    *,
    current_version: Version | None,
) -> VerifiedPackage:
    """Everything installation checks, short of writing."""
    raise NotImplementedError
