"""Build a signed package from an application directory (DESIGN.md section 3). Operator side.

A package directory holds three files:

- ``payload.tar.gz``: the application tree as a gzip tar, members relative to
  its root, sorted by path, regular files and the directories that contain
  them only, owner root (uid/gid 0), a fixed modification time and no
  absolute paths, so the same tree always gives the same bytes;
- ``manifest.json``: the canonical manifest listing every file with its
  SHA-256, size in bytes and permission bits, plus the archive's own SHA-256
  and size;
- ``manifest.sig``: the Ed25519 signature over the exact manifest bytes.

Secrets and junk are left out by default (:data:`DEFAULT_EXCLUDES`, plus the
patterns of a ``.javiaignore`` file at the root of the application), and a
symbolic link anywhere in the tree is refused rather than followed or packaged.
Files that still look like secrets (private keys, cloud and service tokens)
are packaged but named in :attr:`BuiltPackage.warnings`
(:func:`find_secret_warnings`), so the operator sees them before devices do.

The agent reads package directories with
:func:`javia_core.package_reader.read_package_dir` (installs from a USB stick);
this module is the operator's builder.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from javia_core.errors import ManifestError, PackageError, VersionError
from javia_core.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    ArchiveInfo,
    FileEntry,
    KeyringChanges,
    Manifest,
    key_id_for,
    sign_manifest,
    validate_apt_package,
)
from javia_core.models import UpdateType
from javia_core.versioning import EXPECTED_FORM, Version

__all__ = [
    "DEFAULT_EXCLUDES",
    "IGNORE_FILE_NAME",
    "PAYLOAD_MTIME",
    "VERSION_FILE_NAME",
    "BuiltPackage",
    "ExcludeRules",
    "SourceFile",
    "build_package",
    "collect_files",
    "find_secret_warnings",
    "normalized_mode",
    "read_app_version",
    "sanitize_app_name",
]

#: Left out of every package (DESIGN.md section 3). Gitignore-like: a pattern
#: is matched (``fnmatch``) against the relative path and against each path
#: part; a trailing ``/`` matches directories only.
DEFAULT_EXCLUDES: tuple[str, ...] = (".env*", ".git/", "__pycache__/", "*.pyc", ".venv/")
#: A file of extra exclude patterns at the root of the application directory.
IGNORE_FILE_NAME = ".javiaignore"
#: The application's version file, one line ``vX.Y.Z`` (DESIGN.md section 2).
VERSION_FILE_NAME = "VERSION"
#: Modification time of every archive member, seconds since the Unix epoch
#: (1980-01-01T00:00:00Z, the earliest time every archive tool accepts).
PAYLOAD_MTIME = 315_532_800
#: Permission bits of the directories in the archive.
DIRECTORY_MODE = 0o755
#: Permission bits of a packaged file: executable by anyone if its source file
#: had any execute bit, else readable by anyone; writable by the owner only.
EXECUTABLE_FILE_MODE = 0o755
FILE_MODE = 0o644

_CHUNK_BYTES = 1024 * 1024
_GZIP_LEVEL = 9
_APP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def normalized_mode(mode: int) -> int:
    """The mode a file with permission bits ``mode`` gets in a package: 0755 or 0644.

    0755 if any execute bit (user, group or other) is set, else 0644. Whatever
    the operator's tree holds (0777, 0666, 0600, setuid...), a package never
    carries group or other write permission nor a setuid, setgid or sticky
    bit, so a device, which refuses those (DESIGN.md section 3), accepts every
    package javia builds, and no installed file is writable by other users.
    """
    return EXECUTABLE_FILE_MODE if mode & 0o111 else FILE_MODE


@dataclass(frozen=True)
class SourceFile:
    """One regular file to package.

    Attributes:
        path: posix path relative to the application directory, e.g. ``pkg/main.py``.
        absolute: the file on disk.
        size: size in bytes when it was collected.
        mode: the mode the file is packaged with, :func:`normalized_mode` of
            its permission bits (0644, or 0755 if it had any execute bit).
    """

    path: str
    absolute: Path
    size: int
    mode: int


@dataclass(frozen=True)
class BuiltPackage:
    """A package written by :func:`build_package`.

    Attributes:
        directory: the package directory.
        manifest: the signed manifest.
        manifest_bytes: the exact bytes of ``manifest.json`` (what was signed).
        signature_bytes: the bytes of ``manifest.sig``.
        manifest_path: ``directory / "manifest.json"``.
        signature_path: ``directory / "manifest.sig"``.
        payload_path: ``directory / "payload.tar.gz"``.
        warnings: one line per packaged file that looks like a secret (see
            :func:`find_secret_warnings`); the package was built anyway.
    """

    directory: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes
    manifest_path: Path
    signature_path: Path
    payload_path: Path
    warnings: tuple[str, ...] = ()


class ExcludeRules:
    """Exclude patterns with the syntax and meaning of a ``.gitignore`` file.

    Matching is git's own (the ``pathspec`` library's ``gitignore`` flavour):
    a pattern without a slash (other than a trailing one) matches a name at any
    depth; a slash at the start or in the middle anchors it to the application
    root; ``**`` matches any number of directories (``**/secrets`` excludes a
    top-level ``secrets/`` too); a trailing ``/`` restricts it to directories;
    ``!`` re-includes what an earlier pattern excluded and the last matching
    pattern wins; ``#`` starts a comment line. As in git, a file inside an
    excluded directory cannot be re-included: the walk does not enter it.
    Leading and trailing blanks of a line are ignored.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        # Imported here: the agent imports this module to read packages and
        # never builds one, so it does not load the matcher.
        from pathspec import GitIgnoreSpec

        self._patterns = tuple(
            text for text in (raw.strip() for raw in patterns) if text and not text.startswith("#")
        )
        self._spec = GitIgnoreSpec.from_lines(self._patterns)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The patterns in force, as written."""
        return self._patterns

    def excludes(self, path: str, is_directory: bool) -> bool:
        """Return whether ``path`` (relative posix path) is excluded.

        Only the entry itself is tested; a caller walking the tree does not
        descend into excluded directories, which is how a pattern applies to
        every path part.
        """
        return self._spec.match_file(f"{path}/" if is_directory else path)


def _load_rules(app_dir: Path) -> ExcludeRules:
    patterns = list(DEFAULT_EXCLUDES)
    ignore_file = app_dir / IGNORE_FILE_NAME
    if ignore_file.is_symlink():
        raise PackageError(
            f"{ignore_file} is a symbolic link: symlinks are refused (copy the target in instead)"
        )
    if ignore_file.is_file():
        try:
            patterns.extend(ignore_file.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError:
            raise PackageError(f"{ignore_file} is not UTF-8 text") from None
    return ExcludeRules(patterns)


def _check_name(relative: str, absolute: Path) -> None:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise PackageError(
            f"file name {absolute} is not valid UTF-8: rename it (package paths are UTF-8)"
        ) from None
    if "\\" in relative or "\x00" in relative:
        raise PackageError(
            f"file name {relative!r} contains a backslash: rename it (package paths use '/')"
        )


def collect_files(app_dir: Path) -> list[SourceFile]:
    """List the files to package, with excludes applied, sorted by path.

    Walks ``app_dir`` without following links, leaving out
    :data:`DEFAULT_EXCLUDES` and the patterns of ``app_dir/.javiaignore``
    (see :class:`ExcludeRules`). Empty directories are not packaged: the
    archive holds files and the directories that contain them.

    Args:
        app_dir: the application directory (``pi_client/``).

    Returns:
        The files, sorted by their relative posix path.

    Raises:
        PackageError: ``app_dir`` is not a directory; the tree holds a
            symbolic link (named in the message; symlinks are refused, copy the
            target in instead), a FIFO, socket or device file, or a file name
            that is not UTF-8 or contains a backslash.
    """
    app_dir = Path(app_dir)
    if not app_dir.is_dir():
        raise PackageError(f"application directory {app_dir} does not exist or is not a directory")
    rules = _load_rules(app_dir)
    found: list[SourceFile] = []

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            raise PackageError(f"cannot list {directory}: {error.strerror}") from None
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            absolute = Path(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as error:
                raise PackageError(f"cannot read {relative}: {error.strerror}") from None
            is_directory = stat.S_ISDIR(info.st_mode)
            if rules.excludes(relative, is_directory):
                continue
            _check_name(relative, absolute)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(absolute)
                raise PackageError(
                    f"{relative} is a symbolic link (-> {target}): symlinks are refused; "
                    "copy the target in instead, or exclude it in .javiaignore"
                )
            if is_directory:
                walk(absolute, relative + "/")
            elif stat.S_ISREG(info.st_mode):
                found.append(
                    SourceFile(
                        path=relative,
                        absolute=absolute,
                        size=info.st_size,
                        mode=normalized_mode(stat.S_IMODE(info.st_mode)),
                    )
                )
            else:
                raise PackageError(
                    f"{relative} is not a regular file or directory (a FIFO, socket or device): "
                    "only regular files can be packaged; exclude it in .javiaignore"
                )

    walk(app_dir, "")
    found.sort(key=lambda source: source.path)
    return found


def read_app_version(app_dir: Path) -> Version | None:
    """Read the application's ``VERSION`` file (DESIGN.md section 2).

    Args:
        app_dir: the application directory.

    Returns:
        The version, or ``None`` if ``app_dir/VERSION`` does not exist.

    Raises:
        VersionError: the file is not UTF-8 or not exactly one line ``vX.Y.Z``
            (an optional final newline is allowed); the message names the file
            and the expected form.
    """
    path = Path(app_dir) / VERSION_FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise VersionError(f"cannot read {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VersionError(f"{path} is not UTF-8 text: expected one line {EXPECTED_FORM}") from None
    line = text.removesuffix("\n")
    if not Version.is_valid(line):
        shown = line if len(line) <= 40 else line[:40] + "…"
        raise VersionError(f"{path} holds {shown!r}: expected one line {EXPECTED_FORM}")
    return Version.parse(line)


def sanitize_app_name(name: str) -> str:
    """Turn a directory name into a valid manifest ``app`` name.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``;
    leading non-alphanumerics are dropped; the result is cut to 64 characters.
    An empty result becomes ``app``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:64]
    return cleaned or "app"


class _HashingReader:
    """Reads exactly ``size`` bytes from ``handle``, hashing and reporting progress."""

    def __init__(self, handle: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_bytes = on_bytes
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size if size >= 0 else _CHUNK_BYTES)
        self.digest.update(data)
        self.count += len(data)
        if data:
            self._on_bytes(len(data))
        return data


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _tar_info(path: str, *, size: int, mode: int, directory: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = mode
    info.mtime = PAYLOAD_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _parent_directories(paths: Sequence[str]) -> list[str]:
    directories: set[str] = set()
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directories.add("/".join(parts[:depth]))
    return sorted(directories)


def _write_payload(
    archive_path: Path,
    sources: Sequence[SourceFile],
    version_bytes: bytes,
    version_mode: int,
    progress: Callable[[int, int], None] | None,
) -> list[FileEntry]:
    """Write the payload tar.gz; return the manifest entries of what it holds."""
    paths = sorted({source.path for source in sources} | {VERSION_FILE_NAME})
    by_path = {source.path: source for source in sources}
    total = sum(source.size for source in sources if source.path != VERSION_FILE_NAME) + len(
        version_bytes
    )
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    # Directories first in their sorted place: tar order is sorted by path over
    # files and directories together, so each directory precedes its content.
    members = sorted(
        [(path, False) for path in paths] + [(path, True) for path in _parent_directories(paths)]
    )
    entries: list[FileEntry] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with (
        open(os.open(archive_path, flags, 0o644), "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
        ) as compressed,
        tarfile.open(
            fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8"
        ) as archive,
    ):
        for path, is_directory in members:
            if is_directory:
                archive.addfile(_tar_info(path, size=0, mode=DIRECTORY_MODE, directory=True))
                continue
            if path == VERSION_FILE_NAME:
                reader = _HashingReader(io.BytesIO(version_bytes), advance)
                info = _tar_info(path, size=len(version_bytes), mode=version_mode, directory=False)
                archive.addfile(info, reader)
                entries.append(
                    FileEntry(
                        path=path,
                        sha256=reader.digest.hexdigest(),
                        size=info.size,
                        mode=version_mode,
                    )
                )
                continue
            source = by_path[path]
            entries.append(_add_source(archive, source, advance))
    return entries


def _add_source(
    archive: tarfile.TarFile, source: SourceFile, advance: Callable[[int], None]
) -> FileEntry:
    try:
        descriptor = os.open(source.absolute, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise PackageError(f"cannot read {source.path}: {error.strerror}") from None
    with open(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PackageError(f"{source.path} is no longer a regular file")
        mode = normalized_mode(stat.S_IMODE(info.st_mode))
        reader = _HashingReader(handle, advance)
        member = _tar_info(source.path, size=info.st_size, mode=mode, directory=False)
        try:
            archive.addfile(member, reader)
        except OSError as error:
            raise PackageError(
                f"{source.path} changed while it was being packaged ({error}): try again"
            ) from None
        if reader.count != info.st_size or handle.read(1):
            raise PackageError(f"{source.path} changed while it was being packaged: try again")
    return FileEntry(
        path=source.path, sha256=reader.digest.hexdigest(), size=info.st_size, mode=mode
    )


# --------------------------------------------------------------------------- secrets

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
        files: the files to package (from :func:`collect_files`).

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


def _keyring_changes(
    add_keys: Sequence[Path], retire_keys: Sequence[str], signing_key_id: str
) -> KeyringChanges | None:
    """The manifest's ``keyring`` field from public key files and key ids to retire."""
    if not add_keys and not retire_keys:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from javia_core.keys import load_public_key

    pems = []
    for path in add_keys:
        key = load_public_key(Path(path))
        pems.append(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())
    retire = tuple(dict.fromkeys(key_id.strip().lower() for key_id in retire_keys))
    if signing_key_id in retire:
        raise ManifestError(
            f"cannot retire key {signing_key_id}: it signs this very package; retire a key "
            "with a package signed by its successor"
        )
    try:
        return KeyringChanges(add=tuple(dict.fromkeys(pems)), retire=retire)
    except ValidationError as error:
        problems = "; ".join(
            str(item["msg"]).removeprefix("Value error, ") for item in error.errors()[:3]
        )
        raise ManifestError(f"invalid keyring changes: {problems}") from None


def _new_manifest(**fields: Any) -> Manifest:
    try:
        return Manifest(**fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()[:3]
        )
        raise ManifestError(f"cannot build the manifest: {problems}") from None


def _write_new(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with open(os.open(path, flags, 0o644), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_version_file(app_dir: Path, version: Version) -> None:
    path = app_dir / VERSION_FILE_NAME
    mode = 0o644
    if path.is_symlink():
        raise PackageError(f"{path} is a symbolic link: refusing to write through it")
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    temporary = app_dir / f".{VERSION_FILE_NAME}.javia-tmp-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
        handle.write(f"{version}\n".encode("ascii"))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)


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
    add_keys: Sequence[Path] = (),
    retire_keys: Sequence[str] = (),
) -> BuiltPackage:
    """Build and sign a package from ``app_dir`` into ``output_dir``.

    Writes ``payload.tar.gz``, ``manifest.sig`` and, last, ``manifest.json``
    (DESIGN.md section 3). The payload's ``VERSION`` holds ``version`` (the
    source file's content is replaced in the archive, or the file added).

    Args:
        app_dir: the application directory; see :func:`collect_files` for
            what is left out and refused.
        output_dir: the package directory; created if missing. It must not
            already hold a package.
        version: the version being published.
        update_type: scheduled, urgent or instant (DESIGN.md section 4); signed.
        description: release notes shown to operators (at most 10,000 characters).
        system_packages: Debian package names (optionally ``name=version``)
            the device installs with apt; signed.
        private_key: the operator's Ed25519 signing key.
        now: the build time, an aware datetime (stored as UTC, whole seconds).
        app_name: the manifest ``app``; defaults to the application
            directory's name made valid by :func:`sanitize_app_name`.
        write_version_file: after the package is complete, also write the new
            version into ``app_dir/VERSION`` (atomically).
        progress: called as ``progress(done_bytes, total_bytes)`` while files
            are archived.
        add_keys: public key files (``*.pub``) devices trust from this
            package on (key rotation; signed into ``keyring.add``).
        retire_keys: key ids devices stop trusting after this package
            (``keyring.retire``); never the id of ``private_key``.

    Returns:
        The written package; its ``warnings`` name files that look like
        secrets (:func:`find_secret_warnings`).

    Raises:
        ManifestError: an invalid system package name, app name or
            description, a naive ``now``, or invalid keyring changes (a key id
            that is not 16 hex digits, retiring the signing key, a key both
            added and retired); raised before anything is written.
        SigningKeyError: a file in ``add_keys`` is not an Ed25519 public key.
        PackageError: the application tree cannot be packaged (see
            :func:`collect_files`), ``output_dir`` already holds a package, or a
            file changed while it was being read.
    """
    app_dir = Path(app_dir)
    output_dir = Path(output_dir)
    if not isinstance(version, Version):
        raise TypeError("version must be a javia_core.versioning.Version")
    packages = tuple(validate_apt_package(spec) for spec in system_packages)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ManifestError("created_at (now) must be an aware datetime, e.g. UTC")
    if len(description) > 10_000:
        raise ManifestError(
            f"description is {len(description)} characters long: at most 10000 are allowed"
        )
    name = app_name if app_name is not None else sanitize_app_name(app_dir.resolve().name)
    if not _APP_NAME_PATTERN.fullmatch(name):
        raise ManifestError(
            f"invalid app name {name[:80]!r}: expected 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    update_type = UpdateType(update_type)
    keyring_changes = _keyring_changes(add_keys, retire_keys, key_id_for(private_key.public_key()))

    sources = collect_files(app_dir)
    warnings = tuple(find_secret_warnings(sources))
    version_source = next((s for s in sources if s.path == VERSION_FILE_NAME), None)
    version_mode = version_source.mode if version_source is not None else FILE_MODE
    version_bytes = f"{version}\n".encode("ascii")

    manifest_path = output_dir / MANIFEST_NAME
    signature_path = output_dir / SIGNATURE_NAME
    payload_path = output_dir / PAYLOAD_NAME
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PackageError(
            f"cannot create output directory {output_dir}: {error.strerror}"
        ) from None
    existing = [p.name for p in (manifest_path, signature_path, payload_path) if os.path.lexists(p)]
    if existing:
        raise PackageError(
            f"{output_dir} already holds a package ({', '.join(existing)}): "
            "refusing to overwrite it; choose an empty output directory"
        )

    temporary_payload = output_dir / f".{PAYLOAD_NAME}.partial-{os.getpid()}"
    written: list[Path] = []
    try:
        temporary_payload.unlink(missing_ok=True)
        entries = _write_payload(temporary_payload, sources, version_bytes, version_mode, progress)
        archive_sha256, archive_size = _sha256_of(temporary_payload)
        manifest = _new_manifest(
            app=name,
            version=str(version),
            created_at=now,
            update_type=update_type,
            description=description,
            system_packages=packages,
            files=tuple(entries),
            archive=ArchiveInfo(name=PAYLOAD_NAME, sha256=archive_sha256, size=archive_size),
            unpacked_size=sum(entry.size for entry in entries),
            keyring=keyring_changes,
        )
        manifest_bytes = manifest.to_bytes()
        signature_bytes = sign_manifest(manifest_bytes, private_key).to_bytes()
        if os.path.lexists(payload_path):
            raise PackageError(f"{payload_path} appeared while packaging: refusing to overwrite it")
        os.rename(temporary_payload, payload_path)
        written.append(payload_path)
        _write_new(signature_path, signature_bytes)
        written.append(signature_path)
        _write_new(manifest_path, manifest_bytes)
        written.append(manifest_path)
    except FileExistsError as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise PackageError(
            f"{error.filename} appeared while packaging: refusing to overwrite it"
        ) from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        temporary_payload.unlink(missing_ok=True)

    if write_version_file:
        _replace_version_file(app_dir, version)
    return BuiltPackage(
        directory=output_dir,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        signature_bytes=signature_bytes,
        manifest_path=manifest_path,
        signature_path=signature_path,
        payload_path=payload_path,
        warnings=warnings,
    )
