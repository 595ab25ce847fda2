"""The application tree a package is built from: what goes in, what is left out (DESIGN.md section 3).

:func:`collect_files` walks the application directory without following
links, leaving out :data:`DEFAULT_EXCLUDES` and the patterns of a
``.javiaignore`` file (:class:`ExcludeRules`, gitignore syntax), and refuses
symbolic links, FIFOs, sockets, device files and names that are not UTF-8.
Every file gets :func:`normalized_mode`. :func:`read_app_version` reads the
tree's ``VERSION`` file. Operator side; nothing here writes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from javia_core.errors import PackageError, VersionError
from javia_core.versioning import EXPECTED_FORM, Version

__all__ = [
    "DEFAULT_EXCLUDES",
    "EXECUTABLE_FILE_MODE",
    "FILE_MODE",
    "IGNORE_FILE_NAME",
    "VERSION_FILE_NAME",
    "ExcludeRules",
    "SourceFile",
    "collect_files",
    "normalized_mode",
    "read_app_version",
]

#: Left out of every package (DESIGN.md section 3), in the syntax of
#: :class:`ExcludeRules` (gitignore); a trailing ``/`` matches directories only.
DEFAULT_EXCLUDES: tuple[str, ...] = (".env*", ".git/", "__pycache__/", "*.pyc", ".venv/")
#: A file of extra exclude patterns at the root of the application directory.
IGNORE_FILE_NAME = ".javiaignore"
#: The application's version file, one line ``vX.Y.Z`` (DESIGN.md section 2).
VERSION_FILE_NAME = "VERSION"
#: Permission bits of a packaged file: executable by anyone if its source file
#: had any execute bit, else readable by anyone; writable by the owner only.
EXECUTABLE_FILE_MODE = 0o755
FILE_MODE = 0o644


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
