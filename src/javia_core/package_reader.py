"""Reading a package directory from disk without trusting it (DESIGN.md section 3).

The agent installs from a package directory (a USB stick, say): it reads the
three files here, capped at sizes no real package exceeds, and verifies them
with :mod:`javia_core.manifest`. Building packages is the operator's job
(:mod:`javia_updates.packaging`).
"""

from __future__ import annotations

from pathlib import Path

from javia_core.errors import PackageError
from javia_core.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
)

__all__ = ["read_package_dir"]


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise PackageError(f"package is incomplete: {path} is missing") from None
    except IsADirectoryError:
        raise PackageError(f"{path} is a directory: expected the {what} file") from None
    except OSError as error:
        raise PackageError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > limit:
        raise PackageError(f"{path} is larger than {limit} bytes: not a javia {what}")
    return data


def read_package_dir(directory: Path) -> tuple[bytes, bytes, Path]:
    """Read a package directory (DESIGN.md section 3) without trusting it.

    Nothing is verified here; pass the result to the agent's verification.

    Args:
        directory: a directory holding ``manifest.json``, ``manifest.sig`` and
            ``payload.tar.gz``.

    Returns:
        ``(manifest_bytes, signature_bytes, payload_path)``.

    Raises:
        PackageError: ``directory`` does not exist, or one of the three files is
            missing, is not a regular file, or the manifest or signature file is
            larger than any real one (16 MiB, 4 KiB).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageError(
            f"package directory {directory} does not exist or is not a directory "
            f"(expected {MANIFEST_NAME}, {SIGNATURE_NAME} and {PAYLOAD_NAME} in it)"
        )
    manifest_bytes = _read_capped(directory / MANIFEST_NAME, MAX_MANIFEST_BYTES, "manifest")
    signature_bytes = _read_capped(directory / SIGNATURE_NAME, MAX_SIGNATURE_BYTES, "signature")
    payload_path = directory / PAYLOAD_NAME
    if not payload_path.exists():
        raise PackageError(f"package is incomplete: {payload_path} is missing")
    if not payload_path.is_file():
        raise PackageError(f"{payload_path} is not a regular file")
    return manifest_bytes, signature_bytes, payload_path
