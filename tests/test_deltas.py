"""Delta rules: which source each file comes from, and patches made at publish applied on a device."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_core.deltas import (
    DELTA_SHARE,
    REQUEST_OVERHEAD_BYTES,
    DeltaIndex,
    FileSource,
    PatchInfo,
    compressed_bound,
    plan_delta,
)
from javia_core.manifest import FileEntry


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), mode=0o644)


FILES = [_entry(f"f{n}", bytes([n]) * 10_000) for n in range(10)]
ARCHIVE = 100_000


def _index() -> DeltaIndex:
    return DeltaIndex(object_sizes=(3_000,) * len(FILES))


def test_held_files_cost_nothing_and_one_missing_file_costs_its_object() -> None:
    held = {entry.sha256 for entry in FILES[1:]}
    plan = plan_delta(FILES, _index(), held=held, bases={}, archive_bytes=ARCHIVE)
    assert plan is not None
    assert [step.source for step in plan.steps] == [FileSource.OBJECT] + [FileSource.HELD] * 9
    assert plan.download_bytes == 3_000 + REQUEST_OVERHEAD_BYTES and plan.fetched == 1


def test_a_smaller_patch_against_a_held_base_wins_over_the_object() -> None:
    base = "b" * 64
    index = DeltaIndex(
        object_sizes=(3_000,) * len(FILES),
        patches=(PatchInfo(base=base, target=FILES[0].sha256, size=40),),
    )
    held = {entry.sha256 for entry in FILES[1:]}
    plan = plan_delta(FILES, index, held=held, bases={"f0": {base}}, archive_bytes=ARCHIVE)
    assert plan is not None and plan.steps[0].source is FileSource.PATCH
    assert plan.steps[0].base == base and plan.download_bytes == 40 + REQUEST_OVERHEAD_BYTES
    # The same patch is useless when the device holds another base at that path.
    plan = plan_delta(FILES, index, held=held, bases={"f0": {"c" * 64}}, archive_bytes=ARCHIVE)
    assert plan is not None and plan.steps[0].source is FileSource.OBJECT


def test_a_missing_object_or_a_delta_near_the_archive_size_means_the_archive() -> None:
    index = DeltaIndex(object_sizes=(None,) + (3_000,) * 9)
    assert plan_delta(FILES, index, held=set(), bases={}, archive_bytes=ARCHIVE) is None
    # Nothing held: 10 objects (36,000 bytes) against an archive of 40,000.
    assert plan_delta(FILES, _index(), held=set(), bases={}, archive_bytes=40_000) is None


def test_an_index_for_another_manifest_is_not_used() -> None:
    index = DeltaIndex(object_sizes=(1,) * 9)
    assert plan_delta(FILES, index, held=set(), bases={}, archive_bytes=10**9) is None


def test_an_index_announcing_more_than_a_file_can_compress_to_is_not_believed() -> None:
    index = DeltaIndex(object_sizes=(compressed_bound(FILES[0].size) + 1,) + (1,) * 9)
    held = {entry.sha256 for entry in FILES[1:]}
    assert plan_delta(FILES, index, held=held, bases={}, archive_bytes=10**9) is None


@given(
    held=st.sets(st.integers(min_value=0, max_value=9)),
    sizes=st.lists(st.integers(min_value=0, max_value=20_000), min_size=10, max_size=10),
    archive=st.integers(min_value=1, max_value=200_000),
)
def test_a_plan_covers_every_file_once_and_stays_under_its_share_of_the_archive(
    held: set[int], sizes: list[int], archive: int
) -> None:
    index = DeltaIndex(object_sizes=tuple(sizes))
    plan = plan_delta(
        FILES, index, held={FILES[n].sha256 for n in held}, bases={}, archive_bytes=archive
    )
    if plan is None:
        return
    assert [step.entry for step in plan.steps] == FILES
    assert plan.download_bytes <= DELTA_SHARE * archive
    for step in plan.steps:
        assert (step.source is FileSource.HELD) == (FILES.index(step.entry) in held)


def test_the_index_refuses_what_is_not_a_hash_or_a_size() -> None:
    with pytest.raises(ValueError):
        DeltaIndex.model_validate(
            {"patches": [{"base": "../etc/passwd", "target": "a" * 64, "size": 1}]}
        )
    with pytest.raises(ValueError):
        DeltaIndex.model_validate({"object_sizes": [-1]})
    with pytest.raises(ValueError):
        DeltaIndex.model_validate({"format": 2})


def test_a_patch_made_at_publish_rebuilds_the_file_from_its_base_in_about_the_change() -> None:
    import io

    from javia_agent.delta_download import _decompressed
    from javia_updates.delta_objects import compress_object, make_patch

    base = random.Random(3).randbytes(1_000_000)
    target = base[:500_000] + b"one changed line\n" + base[500_000:]
    patch = make_patch(base, target)
    assert len(patch) < 200
    rebuilt = b"".join(_decompressed(io.BytesIO(patch), base, len(target)))
    assert rebuilt == target
    whole = b"".join(_decompressed(io.BytesIO(compress_object(target)), None, len(target)))
    assert whole == target
    # A frame that would produce more than the signed size stops one byte past it.
    assert len(b"".join(_decompressed(io.BytesIO(patch), base, 1000))) == 1001
