"""Per-file objects and patches of a published package (DESIGN.md section 10, docs/architecture.md).

At publish, :func:`store_delta_objects` reads the package's archive once and
stores, through the ordinary :class:`~javia_updates.backends.store.BlobStore`
(a data directory or Supabase Storage, whichever the backend has):

- one **object** per distinct file, under key ``objects/<sha256>`` (the
  file's SHA-256), name ``object.zst``: the file's bytes as one zstd frame
  (level :data:`OBJECT_LEVEL`). Objects are content-addressed, so a file
  unchanged since an earlier release is already there and is not written
  again;
- for files of at least :data:`~javia_core.deltas.PATCH_MIN_BYTES`, one
  **patch** per earlier release (the :data:`~javia_core.deltas.PATCH_BASE_RELEASES`
  highest versions of the same application below this one) whose file at the
  same path differs: the new file compressed with the old one as zstd
  raw-content dictionary (what ``zstd --patch-from`` does), under key
  ``patches/<base sha256>/<target sha256>``, name ``patch.zst``, kept only
  when smaller than the object;
- the package's :class:`~javia_core.deltas.DeltaIndex` (``delta-index.json``
  next to its manifest).

Only members whose bytes match the manifest's SHA-256 become objects; the
device checks every object and patch against the signed manifest anyway. A
failure here never fails the publish: what this publish wrote is removed, the
package is served as a whole archive (it has no index), and a log line says
why. A publish that fails later removes them with :meth:`DeltaObjects.discard`
(objects that were there before stay).
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from javia_core.deltas import (
    DELTA_INDEX_NAME,
    PATCH_BASE_RELEASES,
    PATCH_MAX_BYTES,
    PATCH_MIN_BYTES,
    DeltaIndex,
    PatchInfo,
)
from javia_core.errors import JaviaError, NotFoundError
from javia_core.manifest import Manifest
from javia_updates.backends.store import BlobStore

__all__ = [
    "OBJECT_LEVEL",
    "OBJECT_NAME",
    "PATCH_LEVEL",
    "PATCH_NAME",
    "DeltaObjects",
    "compress_object",
    "make_patch",
    "object_key",
    "patch_key",
    "store_delta_objects",
]

logger = logging.getLogger(__name__)

#: Blob name of an object under its key ``objects/<sha256>``.
OBJECT_NAME = "object.zst"
#: Blob name of a patch under its key ``patches/<base>/<target>``.
PATCH_NAME = "patch.zst"
#: zstd level of objects: compressed once at publish, read by every device.
OBJECT_LEVEL = 12
#: zstd level of patches (long-distance matching on; few, large files).
PATCH_LEVEL = 19
_LARGEST_WINDOW_LOG = 27  # 128 MiB: base + target of PATCH_MAX_BYTES each fit


def object_key(sha256: str) -> str:
    """Blob key of one object: ``objects/<sha256>``."""
    return f"objects/{sha256}"


def patch_key(base_sha256: str, target_sha256: str) -> str:
    """Blob key of one patch: ``patches/<base sha256>/<target sha256>``."""
    return f"patches/{base_sha256}/{target_sha256}"


@dataclass
class DeltaObjects:
    """What one publish stored: the package's index and the blob keys it wrote (not found there)."""

    index: DeltaIndex | None = None
    written: list[str] = field(default_factory=list)

    def discard(self, blobs: BlobStore) -> None:
        """Remove the objects and patches this publish wrote (a failed publish); logs failures."""
        for key in self.written:
            try:
                blobs.delete(key)
            except (OSError, JaviaError) as error:
                logger.warning("cannot remove %s after a failed publish: %s", key, error)
        self.written.clear()


def compress_object(data: bytes) -> bytes:
    """``data`` as one zstd frame with its content size (level :data:`OBJECT_LEVEL`)."""
    import zstandard

    return zstandard.ZstdCompressor(level=OBJECT_LEVEL, write_content_size=True).compress(data)


def _window_log(size: int) -> int:
    return min(_LARGEST_WINDOW_LOG, max(10, size.bit_length()))


def make_patch(base: bytes, target: bytes) -> bytes:
    """``target`` as one zstd frame using ``base`` as raw-content dictionary (``--patch-from``).

    The device applies it with :func:`javia_agent.delta_download.apply_patch`
    (the same dictionary, a window of ``base + target`` bytes).
    """
    import zstandard

    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    parameters = zstandard.ZstdCompressionParameters.from_level(
        PATCH_LEVEL,
        window_log=_window_log(len(base) + len(target)),
        enable_ldm=True,
        write_content_size=True,
    )
    compressor = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=parameters)
    return compressor.compress(target)


def _decompress(data: bytes, limit: int) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)


def _members(payload: Path, manifest: Manifest) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular member listed in the manifest whose bytes match it."""
    entries = {entry.path: entry for entry in manifest.files}
    with tarfile.open(payload, "r:gz") as archive:
        for member in archive:
            entry = entries.get(member.name)
            if entry is None or not member.isreg() or member.size != entry.size:
                continue
            handle = archive.extractfile(member)
            if handle is None:  # pragma: no cover - regular members always have data
                continue
            data = handle.read(entry.size + 1)
            if hashlib.sha256(data).hexdigest() == entry.sha256:
                yield entry.path, data


def _has(blobs: BlobStore, key: str, name: str) -> int | None:
    try:
        return blobs.size(key, name)
    except NotFoundError:
        return None


def store_delta_objects(
    blobs: BlobStore,
    package_key: str,
    payload: Path,
    manifest: Manifest,
    earlier: Sequence[Manifest],
) -> DeltaObjects:
    """Store the objects, patches and index of one package.

    Args:
        blobs: the backend's blob store.
        package_key: the package's blob key (the index goes there).
        payload: the verified ``payload.tar.gz`` (read, not consumed).
        manifest: its manifest.
        earlier: manifests of earlier releases of the same application,
            highest version first; the first
            :data:`~javia_core.deltas.PATCH_BASE_RELEASES` are patch bases.

    Returns:
        The index (``None`` when anything failed: logged, and what was
        written is removed again) and the keys written.
    """
    stored = DeltaObjects()
    try:
        index = _store(blobs, payload, manifest, earlier[:PATCH_BASE_RELEASES], stored.written)
        blobs.put_bytes(package_key, DELTA_INDEX_NAME, index.model_dump_json().encode())
    except (OSError, tarfile.TarError, JaviaError, ValueError, MemoryError) as error:
        logger.warning(
            "per-file objects of %s not stored (%s): devices download the whole archive",
            manifest.version,
            error,
        )
        stored.discard(blobs)
        return stored
    stored.index = index
    return stored


def _store(
    blobs: BlobStore,
    payload: Path,
    manifest: Manifest,
    bases: Sequence[Manifest],
    written: list[str],
) -> DeltaIndex:
    objects: dict[str, int] = {}
    patches: list[PatchInfo] = []
    for path, data in _members(payload, manifest):
        sha = hashlib.sha256(data).hexdigest()
        if sha in objects:
            continue
        size = _has(blobs, object_key(sha), OBJECT_NAME)
        if size is None:
            compressed = compress_object(data)
            written.append(object_key(sha))
            blobs.put_bytes(object_key(sha), OBJECT_NAME, compressed)
            size = len(compressed)
        objects[sha] = size
        if PATCH_MIN_BYTES <= len(data) <= PATCH_MAX_BYTES:
            patches.extend(_patches_for(blobs, path, sha, data, size, bases, written))
    sizes = tuple(objects.get(entry.sha256) for entry in manifest.files)
    return DeltaIndex(object_sizes=sizes, patches=tuple(patches))


def _patches_for(
    blobs: BlobStore,
    path: str,
    sha: str,
    data: bytes,
    object_size: int,
    bases: Sequence[Manifest],
    written: list[str],
) -> Iterator[PatchInfo]:
    seen: set[str] = set()
    for earlier in bases:
        base = next((entry for entry in earlier.files if entry.path == path), None)
        if base is None or base.sha256 == sha or base.sha256 in seen:
            continue
        seen.add(base.sha256)
        if base.size > PATCH_MAX_BYTES:
            continue
        key = patch_key(base.sha256, sha)
        existing = _has(blobs, key, PATCH_NAME)
        if existing is not None:
            yield PatchInfo(base=base.sha256, target=sha, size=existing)
            continue
        stored_size = _has(blobs, object_key(base.sha256), OBJECT_NAME)
        if stored_size is None:
            continue  # published before objects existed: no base to patch from
        stored = b"".join(blobs.iter_range(object_key(base.sha256), OBJECT_NAME, 0, stored_size))
        base_bytes = _decompress(stored, base.size)
        if hashlib.sha256(base_bytes).hexdigest() != base.sha256:
            logger.warning("object %s does not hold its SHA-256: no patch from it", base.sha256)
            continue
        patch = make_patch(base_bytes, data)
        if len(patch) < object_size:
            written.append(key)
            blobs.put_bytes(key, PATCH_NAME, patch)
            yield PatchInfo(base=base.sha256, target=sha, size=len(patch))
