"""Helpers for package tests: example app trees and hand-built (hostile) packages.

Hostile packages are signed with a test key that the keyring trusts, so the
signature and archive hash both check out and the member checks are the only
defence left.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from javia_core.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    ArchiveInfo,
    FileEntry,
    Manifest,
    key_id_for,
    sign_manifest,
)
from javia_core.models import UpdateType

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def keyring_for(*keys: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    """A keyring trusting the public halves of ``keys``."""
    return {key_id_for(key.public_key()): key.public_key() for key in keys}


def make_app(root: Path, files: Mapping[str, bytes | str], version: str | None = "v1.0.0") -> Path:
    """Create an application tree under ``root`` with ``files`` (relative path -> content)."""
    root.mkdir(parents=True, exist_ok=True)
    if version is not None:
        (root / "VERSION").write_text(f"{version}\n")
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` with its kind and size: to prove nothing was written."""
    seen: dict[str, tuple[str, int]] = {}
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = Path(directory) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            seen[str(path.relative_to(root))] = (kind, 0 if kind == "dir" else info.st_size)
    return seen


@dataclass
class Member:
    """One member of a hand-built archive."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    size: int | None = None  # header size; defaults to len(data)
    pax: dict[str, str] = field(default_factory=dict)


def write_archive(path: Path, members: Iterable[Member]) -> None:
    """Write ``members`` as a gzip tar exactly as given (no name clean-up)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.mode = member.mode
            info.linkname = member.linkname
            info.mtime = 0
            info.pax_headers = dict(member.pax)
            if member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(member.data) if member.size is None else member.size
                data = member.data
                if len(data) < info.size:
                    data = data + b"\0" * (info.size - len(data))
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)


def entry(path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    """The manifest entry describing ``data`` at ``path``."""
    return FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), mode=mode)


def write_signed_package(
    directory: Path,
    members: Iterable[Member],
    files: Iterable[FileEntry],
    key: Ed25519PrivateKey,
    *,
    version: str = "v1.0.0",
    app: str = "voice",
) -> Manifest:
    """Write a package directory whose manifest lists ``files`` and whose archive holds ``members``.

    The manifest's archive size and SHA-256 are those of the archive written,
    so signature and archive checks pass whatever the members are.
    """
    directory.mkdir(parents=True, exist_ok=True)
    write_archive(directory / PAYLOAD_NAME, members)
    return sign_package_dir(directory, files, key, version=version, app=app)


def sign_package_dir(
    directory: Path,
    files: Iterable[FileEntry],
    key: Ed25519PrivateKey,
    *,
    version: str = "v1.0.0",
    app: str = "voice",
) -> Manifest:
    """Sign a manifest listing ``files`` for whatever ``directory/payload.tar.gz`` holds."""
    data = (directory / PAYLOAD_NAME).read_bytes()
    listed = tuple(sorted(files, key=lambda item: item.path))
    manifest = Manifest(
        app=app,
        version=version,
        created_at=NOW,
        update_type=UpdateType.INSTANT,
        description="test package",
        files=listed,
        archive=ArchiveInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
        unpacked_size=sum(item.size for item in listed),
    )
    manifest_bytes = manifest.to_bytes()
    (directory / MANIFEST_NAME).write_bytes(manifest_bytes)
    (directory / SIGNATURE_NAME).write_bytes(sign_manifest(manifest_bytes, key).to_bytes())
    return manifest
