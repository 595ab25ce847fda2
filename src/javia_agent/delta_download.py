"""Delta download: fetch only the files this device does not hold (DESIGN.md section 10).

Called by the DOWNLOADING step once the manifest and signature verified,
before the archive. :func:`fetch_delta`:

1. asks the server for the update's :class:`~javia_core.deltas.DeltaIndex`
   (none: the archive it is);
2. looks at the same path in every installed release (``releases/<version>``,
   the running one first) and **re-hashes** what it may reuse: a file whose
   SHA-256 is the signed one is held; another may be a patch base. A base
   release pruned or a file tampered with on disk is simply not held;
3. lets :func:`~javia_core.deltas.plan_delta` choose, per file, held copy,
   patch or object, or decline when the archive is cheaper;
4. builds the new tree in ``<download>/tree.partial``: held files are
   **copied** (hashed while copied), objects and patches downloaded through
   the client's resumable, rate-limited download into ``<download>/parts/``
   and decompressed (patches against the re-read, re-hashed base) straight
   into the tree, each checked against the size and SHA-256 of the signed
   manifest and given its signed mode; then renames it to ``<download>/tree``.

Copies, not hard links: a hard link shares one inode between releases, so a
write through one (the setup command runs as root in the new release) would
change the old release, the one a rollback returns to.

Anything that fails (a missing object, a forged one, an index that lies, a
file changed on disk during the copy) removes the partial tree and returns
``None``: the caller downloads the archive. Only what the archive would need
too propagates: a shutdown (:class:`DownloadCancelledError`), no network
(:class:`NetworkError`), a busy or throttling server (HTTP 503/429 with a
``Retry-After`` longer than the download waits itself) and a refused token.

VERIFYING and STAGING then use the tree instead of the archive:
:func:`verify_tree` checks every file again (kinds, paths, sizes, SHA-256,
modes, nothing extra or missing), and :func:`install_tree` copies it into a
private staging directory next to ``releases/<version>`` — hashing every
byte written — and renames it into place, as the archive's extraction does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from javia_agent._fs import fsync_directory, remove_tree
from javia_agent.errors import (
    AuthenticationError,
    DownloadCancelledError,
    DownloadError,
    NetworkError,
    ServerError,
)
from javia_agent.staging_sink import DIRECTORY_MODE, StagingSink
from javia_core.deltas import (
    PATCH_MAX_BYTES,
    DeltaIndex,
    DeltaPlan,
    FileSource,
    object_path,
    patch_path,
    plan_delta,
)
from javia_core.errors import PackageError
from javia_core.manifest import FileEntry, Manifest

if TYPE_CHECKING:
    from javia_agent.client import DeviceClient

__all__ = [
    "PARTS_NAME",
    "TREE_NAME",
    "assembled_tree",
    "fetch_delta",
    "install_tree",
    "read_metadata",
    "verify_tree",
]

logger = logging.getLogger(__name__)

#: The complete, checked tree in a download directory.
TREE_NAME = "tree"
#: Downloaded objects and patches (zstd frames) in a download directory.
PARTS_NAME = "parts"
_PARTIAL_TREE = "tree.partial"
_CHUNK_BYTES = 1024 * 1024
#: Largest zstd window accepted from the server (bytes): 128 MiB, enough for a
#: patch of :data:`~javia_core.deltas.PATCH_MAX_BYTES` against a base as large.
_MAX_WINDOW_BYTES = 1 << 27
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def assembled_tree(package_dir: Path) -> Path | None:
    """``<download>/tree`` when a delta download completed there, else ``None``."""
    tree = Path(package_dir) / TREE_NAME
    return tree if tree.is_dir() and not tree.is_symlink() else None


def read_metadata(package_dir: Path) -> tuple[bytes, bytes]:
    """``manifest.json`` and ``manifest.sig`` of a download directory, capped, not trusted.

    Raises:
        PackageError: a file is missing, unreadable or larger than any real one.
    """
    from javia_core.manifest import (
        MANIFEST_NAME,
        MAX_MANIFEST_BYTES,
        MAX_SIGNATURE_BYTES,
        SIGNATURE_NAME,
    )

    found = []
    for name, limit in ((MANIFEST_NAME, MAX_MANIFEST_BYTES), (SIGNATURE_NAME, MAX_SIGNATURE_BYTES)):
        path = Path(package_dir) / name
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as error:
            raise PackageError(f"cannot read {path}: {error.strerror or error}") from None
        if len(data) > limit:
            raise PackageError(f"{path} is larger than {limit} bytes")
        found.append(data)
    return found[0], found[1]


@dataclass
class _Holdings:
    """What the installed releases hold, re-hashed: by SHA-256, and patch bases by path."""

    held: dict[str, Path] = field(default_factory=dict)
    bases: dict[str, dict[str, Path]] = field(default_factory=dict)
    digests: dict[Path, str | None] = field(default_factory=dict)

    def digest(self, path: Path) -> str | None:
        if path not in self.digests:
            self.digests[path] = _hash_file(path)
        return self.digests[path]


def _hash_file(path: Path) -> str | None:
    """SHA-256 of a regular file (links not followed), or ``None`` if there is none."""
    try:
        descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _scan(manifest: Manifest, index: DeltaIndex, releases: Sequence[Path]) -> _Holdings:
    """Re-hash the installed files worth reusing: same path, same size (or a patch base)."""
    patched = {patch.target for patch in index.patches}
    holdings = _Holdings()
    for entry in manifest.files:
        for release in releases:
            if entry.sha256 in holdings.held:
                break
            candidate = release / entry.path
            try:
                info = os.lstat(candidate)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            same_size = info.st_size == entry.size
            base = entry.sha256 in patched and info.st_size <= PATCH_MAX_BYTES
            if not (same_size or base):
                continue
            digest = holdings.digest(candidate)
            if digest == entry.sha256:
                holdings.held[digest] = candidate
            elif digest is not None and base:
                holdings.bases.setdefault(entry.path, {})[digest] = candidate
    return holdings


def fetch_delta(
    client: DeviceClient,
    manifest: Manifest,
    update_id: int,
    package_dir: Path,
    releases: Sequence[Path],
    *,
    should_stop: Callable[[], bool] | None = None,
    keepalive: Callable[[], object] | None = None,
) -> DeltaPlan | None:
    """Build ``<package_dir>/tree`` from held files, objects and patches; ``None``: use the archive.

    Args:
        client: the device client (its download is resumable and rate-limited).
        manifest: the verified, signed manifest.
        update_id: the update being downloaded.
        package_dir: its download directory.
        releases: installed release directories to reuse files from, the
            running one first.
        should_stop: polled while downloading.
        keepalive: called for every file (the watchdog).

    Returns:
        The plan that was carried out, or ``None`` when the server has no
        index, the archive is cheaper, or anything went wrong (logged).

    Raises:
        DownloadCancelledError, NetworkError, AuthenticationError: as for the archive.
        ServerError: HTTP 429/503 (a busy server) still there after the retries.
    """
    package_dir = Path(package_dir)
    if assembled_tree(package_dir) is not None:
        return DeltaPlan((), 0, manifest.archive.size)  # done before a restart; VERIFYING checks it
    try:
        index = client.delta_index(update_id, should_stop=should_stop)
        if index is None:
            logger.info("no per-file objects for %s: downloading the archive", manifest.version)
            return None
        holdings = _scan(manifest, index, releases)
        plan = plan_delta(
            manifest.files,
            index,
            held=holdings.held,
            bases={path: set(found) for path, found in holdings.bases.items()},
            archive_bytes=manifest.archive.size,
        )
        if plan is None:
            logger.info("a delta of %s is not cheaper: downloading the archive", manifest.version)
            return None
        logger.info(
            "delta download of %s: %d of %d files, about %d bytes instead of %d",
            manifest.version,
            plan.fetched,
            len(plan.steps),
            plan.download_bytes,
            plan.archive_bytes,
        )
        _assemble(client, plan, index, holdings, package_dir, should_stop, keepalive)
    except (DownloadCancelledError, NetworkError, AuthenticationError):
        raise
    except ServerError as error:
        if error.status_code in (429, 503):
            raise
        _abandon(package_dir, manifest, error)
        return None
    except (DownloadError, PackageError, OSError) as error:
        _abandon(package_dir, manifest, error)
        return None
    return plan


def _abandon(package_dir: Path, manifest: Manifest, error: BaseException) -> None:
    logger.warning(
        "delta download of %s failed (%s): downloading the archive instead", manifest.version, error
    )
    for name in (_PARTIAL_TREE, PARTS_NAME):
        with contextlib.suppress(OSError):
            remove_tree(package_dir / name)


def _assemble(
    client: DeviceClient,
    plan: DeltaPlan,
    index: DeltaIndex,
    holdings: _Holdings,
    package_dir: Path,
    should_stop: Callable[[], bool] | None,
    keepalive: Callable[[], object] | None,
) -> None:
    partial = package_dir / _PARTIAL_TREE
    parts = package_dir / PARTS_NAME
    if os.path.lexists(partial):
        remove_tree(partial)
    os.mkdir(partial, 0o700)
    parts.mkdir(mode=0o700, exist_ok=True)
    sink = StagingSink(partial)
    sizes = {patch.base + patch.target: patch.size for patch in index.patches}
    object_sizes = {  # the plan lists the manifest's files in order, as the index does
        step.entry.sha256: size
        for step, size in zip(plan.steps, index.object_sizes, strict=True)
        if size is not None
    }
    for step in plan.steps:
        entry = step.entry
        if keepalive is not None:
            keepalive()
        if step.source is FileSource.HELD:
            with open_regular(holdings.held[entry.sha256]) as source:
                _write_checked(sink, entry, _chunks(source), "the installed copy")
            continue
        if step.source is FileSource.OBJECT:
            target, name = object_path(entry.sha256), entry.sha256
            size = object_sizes[entry.sha256]
            base_bytes = None
        else:
            assert step.base is not None
            target = patch_path(step.base, entry.sha256)
            name = f"{step.base}-{entry.sha256}"
            size = sizes[step.base + entry.sha256]
            base_bytes = _read_base(holdings.bases[entry.path][step.base], step.base)
        part = parts / f"{name}.zst"
        client.download_delta_part(target, part, size, should_stop=should_stop)
        try:
            with open_regular(part) as compressed:
                _write_checked(
                    sink,
                    entry,
                    _decompressed(compressed, base_bytes, entry.size),
                    f"the server's {step.source.value}",
                )
        except PackageError:
            part.unlink(missing_ok=True)  # never reused by a retry
            raise
    os.rename(partial, package_dir / TREE_NAME)
    remove_tree(parts)


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading, refusing links and anything but a regular file.

    Raises:
        PackageError: not a regular file, or it cannot be opened.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as error:
        raise PackageError(f"cannot open {path}: {error.strerror or error}") from None
    handle = os.fdopen(descriptor, "rb")
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise PackageError(f"{path} is not a regular file")
        yield handle


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: handle.read(_CHUNK_BYTES), b"")


def _read_base(path: Path, sha256: str) -> bytes:
    """The patch base's bytes, re-hashed now: the bytes used are the bytes checked."""
    with open_regular(path) as handle:
        data = handle.read(PATCH_MAX_BYTES + 1)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PackageError(f"{path} changed on disk while the update was prepared")
    return data


def _decompressed(handle: BinaryIO, dictionary: bytes | None, size: int) -> Iterator[bytes]:
    """Decompressed chunks of one zstd frame, never more than ``size + 1`` bytes."""
    import zstandard

    try:
        decompressor = zstandard.ZstdDecompressor(
            dict_data=None
            if dictionary is None
            else zstandard.ZstdCompressionDict(
                dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT
            ),
            max_window_size=_MAX_WINDOW_BYTES,
        )
        with decompressor.stream_reader(handle, read_across_frames=False) as reader:
            produced = 0
            while produced <= size:
                chunk = reader.read(min(_CHUNK_BYTES, size + 1 - produced))
                if not chunk:
                    return
                produced += len(chunk)
                yield chunk
    except zstandard.ZstdError as error:
        raise PackageError(f"not a valid zstd frame ({error})") from None


def _write_checked(sink: StagingSink, entry: FileEntry, chunks: Iterable[bytes], what: str) -> None:
    """Write ``chunks`` as ``entry`` into the tree; refuse bytes that are not the signed ones."""
    digest = hashlib.sha256()
    written = 0
    target = sink.open_file(entry.path, entry.mode)
    try:
        for chunk in chunks:
            written += len(chunk)
            if written > entry.size:
                break
            digest.update(chunk)
            target.write(chunk)
    finally:
        target.finish()
    if written != entry.size or digest.hexdigest() != entry.sha256:
        raise PackageError(
            f"{entry.path}: {what} does not match the signed manifest "
            f"(SHA-256 {entry.sha256[:12]}…, {entry.size} bytes): refused"
        )


def verify_tree(tree: Path, manifest: Manifest) -> None:
    """Check a delta tree against the signed manifest: exactly its files, bytes and modes.

    Only regular files and directories (links are not followed); every
    listed file present once with its size, SHA-256 and mode; nothing else.

    Raises:
        PackageError: the first difference, naming the path.
    """
    for _entry, _handle in _walk_tree(tree, manifest):
        pass


def _walk_tree(tree: Path, manifest: Manifest) -> Iterator[tuple[FileEntry, BinaryIO]]:
    """Yield (entry, open handle) per listed file after checking the tree's shape; hashes on read."""
    expected = {entry.path: entry for entry in manifest.files}
    seen: set[str] = set()
    for directory, directories, files in os.walk(tree, followlinks=False):
        for name in [*directories, *files]:
            path = Path(directory) / name
            relative = path.relative_to(tree).as_posix()
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                continue
            entry = expected.get(relative)
            if entry is None or not stat.S_ISREG(info.st_mode):
                raise PackageError(f"{relative}: not a file of the signed manifest: refused")
            if stat.S_IMODE(info.st_mode) != entry.mode & 0o777:
                raise PackageError(
                    f"{relative}: mode {stat.S_IMODE(info.st_mode):o} is not the signed "
                    f"{entry.mode & 0o777:o}: refused"
                )
            with open_regular(path) as handle:
                digest = hashlib.sha256()
                size = 0
                for chunk in _chunks(handle):
                    digest.update(chunk)
                    size += len(chunk)
                if size != entry.size or digest.hexdigest() != entry.sha256:
                    raise PackageError(
                        f"{relative}: bytes differ from the signed manifest: refused"
                    )
                handle.seek(0)
                yield entry, handle
            seen.add(relative)
    missing = sorted(set(expected) - seen)
    if missing:
        raise PackageError(f"{missing[0]}: listed in the signed manifest but missing: refused")


def install_tree(tree: Path, manifest: Manifest, destination: Path) -> None:
    """Copy a checked delta tree to ``destination`` (``releases/<version>``), all or nothing.

    Like :func:`javia_agent.verification.extract_payload`: a private staging
    directory next to ``destination``, every file written there with
    ``O_NOFOLLOW``/``O_EXCL`` and its signed mode and hashed as written,
    ``os.sync``, mode 0755, one rename.

    Raises:
        PackageError: ``destination`` exists, or the tree differs from the
            signed manifest; nothing is left behind.
    """
    destination = Path(destination)
    if os.path.lexists(destination):
        raise PackageError(f"{destination} already exists: refusing to install over it")
    staging = destination.parent / f".staging-{destination.name}-{secrets.token_hex(8)}"
    os.mkdir(staging, 0o700)
    try:
        sink = StagingSink(staging)
        for entry, handle in _walk_tree(tree, manifest):
            _write_checked(sink, entry, _chunks(handle), "the downloaded tree")
        os.sync()
        os.chmod(staging, DIRECTORY_MODE)
        if os.path.lexists(destination):
            raise PackageError(f"{destination} appeared while staging: refusing to replace it")
        os.rename(staging, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(staging)
        raise
    with contextlib.suppress(OSError):
        fsync_directory(destination.parent)
