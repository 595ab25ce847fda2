"""Files that look like secrets, named before a package reaches every device (DESIGN.md section 3).

A warning, not a refusal: :func:`find_secret_warnings` names a file by its
name (:data:`SECRET_FILE_NAMES`) or by the start of its content (private key
headers, cloud and service tokens), never quoting the matched text.
Operator side.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from pathlib import Path

from javia_updates.package_tree import IGNORE_FILE_NAME, SourceFile

__all__ = ["SECRET_FILE_NAMES", "SECRET_SCAN_BYTES", "find_secret_warnings"]

_CHUNK_BYTES = 1024 * 1024

#: File names that usually hold a secret (SSH keys, credential stores).
SECRET_FILE_NAMES: tuple[str, ...] = (
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    ".netrc",
    ".pgpass",
    ".htpasswd",
)
#: Content that marks a secret, with what to call it in the warning. The
#: warning names the kind of secret, never the matched text.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (
        re.compile(
            rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
        ),
        "a private key",
    ),
    (re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(rb"\bgh[opsur]_[A-Za-z0-9]{36}\b"), "a GitHub token"),
    (re.compile(rb"\bgithub_pat_[A-Za-z0-9_]{60,}"), "a GitHub token"),
    (re.compile(rb"\bglpat-[A-Za-z0-9_-]{20}\b"), "a GitLab token"),
    (re.compile(rb"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(rb"\bAIza[0-9A-Za-z_-]{35}\b"), "a Google API key"),
    (re.compile(rb"\b[rs]k_live_[0-9A-Za-z]{20,}"), "a Stripe secret key"),
    (re.compile(rb"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"), "an API secret key"),
)
#: Bytes of each file searched for secret content (the start of larger files).
SECRET_SCAN_BYTES = 4 * 1024 * 1024
# Matches never span more than this; chunks overlap by it.
_SCAN_OVERLAP = 256


def _secret_in(path: Path) -> str | None:
    """What kind of secret the first :data:`SECRET_SCAN_BYTES` of ``path`` hold, if any."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return None  # unreadable files are reported when they are archived
    with handle:
        tail = b""
        remaining = SECRET_SCAN_BYTES
        while remaining > 0:
            chunk = handle.read(min(_CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            window = tail + chunk
            for pattern, what in _SECRET_PATTERNS:
                if pattern.search(window):
                    return what
            tail = window[-_SCAN_OVERLAP:]
    return None


def find_secret_warnings(files: Sequence[SourceFile]) -> list[str]:
    """One warning per file that looks like a secret: by name or by content.

    Names: :data:`SECRET_FILE_NAMES` (SSH private keys such as ``id_ed25519``,
    key stores, ``.netrc``). Content, in the first :data:`SECRET_SCAN_BYTES`
    of each file: PEM private key headers (PKCS#1/#8, OpenSSH, PGP), AWS
    access key ids and the token formats of GitHub, GitLab, Slack, Google and
    Stripe. ``.env*`` files never get here: they are excluded by default.

    This is a warning, not a refusal: a package may need a private key (a TLS
    client key, say), and patterns have false positives. Every file in a
    package reaches every device, so the operator should look.

    Args:
        files: the files to package (from
            :func:`~javia_updates.package_tree.collect_files`).

    Returns:
        Warnings naming the file and the kind of secret, never its text.
    """
    warnings = []
    for source in files:
        name = source.path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_FILE_NAMES):
            what: str | None = "a private key or credential file (by its name)"
        else:
            what = _secret_in(source.absolute)
        if what is not None:
            warnings.append(
                f"{source.path} looks like it holds {what}: it will be published to every "
                f"device; if it is a secret, exclude it in {IGNORE_FILE_NAME}"
            )
    return warnings
