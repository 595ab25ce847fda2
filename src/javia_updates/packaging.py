"""Build a signed package from an application directory (DESIGN.md section 3). Operator side.

Skeleton: signatures are final; bodies are being filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_updates.errors import PackageError
from javia_updates.manifest import Manifest
from javia_updates.models import UpdateType
from javia_updates.versioning import Version

__all__ = [
    "DEFAULT_EXCLUDES",
    "IGNORE_FILE_NAME",
    "VERSION_FILE_NAME",
    "SourceFile",
    "BuiltPackage",
    "collect_files",
    "read_app_version",
    "build_package",
    "read_package_dir",
]

DEFAULT_EXCLUDES: tuple[str, ...] = (".env*", ".git/", "__pycache__/", "*.pyc", ".venv/")
IGNORE_FILE_NAME = ".javiaignore"
VERSION_FILE_NAME = "VERSION"


@dataclass(frozen=True)
class SourceFile:
    """One regular file to package: relative posix path, absolute path, bytes, permission bits."""

    path: str
    absolute: Path
    size: int
    mode: int


@dataclass(frozen=True)
class BuiltPackage:
    """A package written by :func:`build_package`."""

    directory: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes
    manifest_path: Path
    signature_path: Path
    payload_path: Path


def collect_files(app_dir: Path) -> list[SourceFile]:
    """List the files to package, excludes applied, sorted by path."""
    raise NotImplementedError


def read_app_version(app_dir: Path) -> Version | None:
    """The version in ``app_dir/VERSION``, or ``None`` if there is no such file."""
    raise NotImplementedError


def build_package(
    app_dir: Path,
    output_dir: Path,
    *,
    version: Version,
    update_type: UpdateType,
    description: str,
    system_packages: Sequence[str],
    private_key: Ed25519PrivateKey,
    now: datetime,
    app_name: str | None = None,
    write_version_file: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> BuiltPackage:
    """Write ``manifest.json``, ``manifest.sig`` and ``payload.tar.gz`` into ``output_dir``."""
    raise NotImplementedError


def read_package_dir(directory: Path) -> tuple[bytes, bytes, Path]:
    """Read a package directory: (manifest bytes, signature bytes, payload path)."""
    raise PackageError("not implemented yet")
