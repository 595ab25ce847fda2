"""Delta downloads: the server's delta index and the rule choosing what to fetch (DESIGN.md section 10).

At publish the server cuts a package into per-file *objects*, named by the
SHA-256 of the file they hold (zstd-compressed, one frame each), and, for
files of at least :data:`PATCH_MIN_BYTES`, *patches*: the file compressed
with the same path's file of one of the previous :data:`PATCH_BASE_RELEASES`
releases as zstd's raw-content dictionary (``zstd --patch-from``). The
:class:`DeltaIndex` lists what it stored, with the compressed sizes.

The index comes from the server and is not signed: it only steers *what*
the agent asks for. Every file the agent installs is still checked against
the SHA-256, size and mode in the signed manifest; an index that lies costs
bandwidth (the agent falls back to the archive), never integrity.

:func:`plan_delta` is the pure rule: for every file of the signed manifest,
keep the copy the device already holds (same SHA-256, re-hashed by the
caller), else the cheapest patch whose base the device holds, else the
object; and decline (``None``: download the archive) when an object is
missing or the sum is not clearly cheaper than the archive.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from javia_core.manifest import FileEntry

__all__ = [
    "DELTA_INDEX_NAME",
    "DELTA_SHARE",
    "MAX_DELTA_INDEX_BYTES",
    "PATCH_BASE_RELEASES",
    "PATCH_MAX_BYTES",
    "PATCH_MIN_BYTES",
    "REQUEST_OVERHEAD_BYTES",
    "DeltaIndex",
    "DeltaPlan",
    "FileSource",
    "PatchInfo",
    "Step",
    "compressed_bound",
    "object_path",
    "patch_path",
    "plan_delta",
]

#: The index's object name next to a package's other objects in the blob store.
DELTA_INDEX_NAME = "delta-index.json"
#: Largest delta index the agent reads, in bytes (about 60,000 files).
MAX_DELTA_INDEX_BYTES = 8 * 1024 * 1024
#: Files at least this large (bytes) get patches against earlier releases at publish.
PATCH_MIN_BYTES = 64 * 1024
#: Files (base and target) larger than this (bytes) get no patch: a patch is
#: applied in memory, and a Pi Zero 2 W has 512 MB.
PATCH_MAX_BYTES = 64 * 1024 * 1024
#: Earlier releases of the same application a large file is patched against.
PATCH_BASE_RELEASES = 3
#: Bytes one extra request costs on the wire (request and answer headers, TLS
#: record overhead), an estimate used only to compare costs.
REQUEST_OVERHEAD_BYTES = 600
#: A delta is used only when it costs at most this share of the archive: the
#: archive is one resumable request, and a near tie is not worth many.
DELTA_SHARE = 0.8

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError("expected 64 lower-case hex digits (a SHA-256)")
    return value


def object_path(sha256: str) -> str:
    """The device route of one object: ``/api/v1/objects/{sha256}``."""
    return f"/api/v1/objects/{_sha256(sha256)}"


def patch_path(base_sha256: str, target_sha256: str) -> str:
    """The device route of one patch: ``/api/v1/patches/{base}/{target}``."""
    return f"/api/v1/patches/{_sha256(base_sha256)}/{_sha256(target_sha256)}"


def compressed_bound(size: int) -> int:
    """Most bytes one zstd frame of ``size`` input bytes can take (generous, bytes).

    zstd's own bound is ``size + size/256 + 64`` or so; an object or patch
    the server announces above this is refused before it is downloaded.
    """
    return size + size // 128 + 4096


class PatchInfo(BaseModel):
    """One stored patch: ``target`` rebuilt from ``base`` in ``size`` bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    target: str
    size: int = Field(ge=0, le=2**40)

    _hashes = field_validator("base", "target")(_sha256)


class DeltaIndex(BaseModel):
    """What the server stored for one package: objects and patches with their sizes in bytes.

    Attributes:
        format: 1.
        object_sizes: the compressed size in bytes of the object of each
            file of the signed manifest, in the manifest's order (``None``:
            the server holds none). Positional, so the index carries no
            hashes for them: about 7 bytes a file.
        patches: the stored patches.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    object_sizes: tuple[int | None, ...] = ()
    patches: tuple[PatchInfo, ...] = ()

    @field_validator("object_sizes")
    @classmethod
    def _sizes(cls, value: tuple[int | None, ...]) -> tuple[int | None, ...]:
        for size in value:
            if size is not None and not 0 <= size <= 2**40:
                raise ValueError(f"an object has an impossible size {size}")
        return value


class FileSource(StrEnum):
    """Where one file of the new release comes from."""

    HELD = "held"  # a verified copy already on the device
    OBJECT = "object"  # GET /api/v1/objects/{sha256}
    PATCH = "patch"  # GET /api/v1/patches/{base}/{target}, applied to the held base


@dataclass(frozen=True)
class Step:
    """One file of the plan: its manifest entry, its source, the base (patches) and the bytes it costs."""

    entry: FileEntry
    source: FileSource
    base: str | None
    cost: int


@dataclass(frozen=True)
class DeltaPlan:
    """Every file of the manifest with its source; ``download_bytes`` is the sum of the costs."""

    steps: tuple[Step, ...]
    download_bytes: int
    archive_bytes: int

    @property
    def fetched(self) -> int:
        """Files that travel over the network (objects and patches)."""
        return sum(1 for step in self.steps if step.source is not FileSource.HELD)


def plan_delta(
    files: Sequence[FileEntry],
    index: DeltaIndex,
    *,
    held: Collection[str],
    bases: Mapping[str, Collection[str]],
    archive_bytes: int,
) -> DeltaPlan | None:
    """Choose a source for every file of the signed manifest, or ``None`` for the whole archive.

    Pure: the caller hashes what the device holds.

    Args:
        files: the signed manifest's files.
        index: the server's delta index (untrusted; sizes only steer the choice).
        held: SHA-256 digests of files the device holds and has just re-hashed.
        bases: by manifest path, the SHA-256 digests of the device's
            re-hashed files at that path (the candidates for a patch base).
        archive_bytes: the signed archive size in bytes.

    Returns:
        The plan, or ``None`` when an object the plan needs is not in the
        index, or the delta would cost more than :data:`DELTA_SHARE` of
        ``archive_bytes`` (each request counted with :data:`REQUEST_OVERHEAD_BYTES`).
    """
    if len(index.object_sizes) != len(files):
        return None  # an index for another manifest: nothing in it can be matched
    patches: dict[str, dict[str, int]] = {}
    for patch in index.patches:
        patches.setdefault(patch.target, {})[patch.base] = patch.size
    steps: list[Step] = []
    total = 0
    for entry, size in zip(files, index.object_sizes, strict=True):
        if entry.sha256 in held:
            steps.append(Step(entry, FileSource.HELD, None, 0))
            continue
        options: list[tuple[int, FileSource, str | None]] = []
        if size is not None and size <= compressed_bound(entry.size):
            options.append((size, FileSource.OBJECT, None))
        for base, patch_size in patches.get(entry.sha256, {}).items():
            if base in bases.get(entry.path, ()) and patch_size <= compressed_bound(entry.size):
                options.append((patch_size, FileSource.PATCH, base))
        if not options:
            return None
        cost, source, chosen_base = min(options, key=lambda option: option[0])
        cost += REQUEST_OVERHEAD_BYTES
        steps.append(Step(entry, source, chosen_base, cost))
        total += cost
    if total > DELTA_SHARE * archive_bytes:
        return None
    return DeltaPlan(tuple(steps), total, archive_bytes)
