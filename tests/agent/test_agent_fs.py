"""The agent's file helpers: removing trees of any depth, and leftovers of interrupted writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from javia_agent._fs import atomic_write, remove_interrupted_writes, remove_tree

from .helpers import deep_tree


def test_a_tree_deeper_than_the_recursion_limit_is_removed_without_following_links(
    tmp_path: Path,
) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("must survive")
    tree = tmp_path / "releases" / ".staging-v1.1.0-0123456789abcdef"
    tree.parent.mkdir()
    deep_tree(tree, sys.getrecursionlimit() + 500, file_each_level=True, link_to=sentinel)

    remove_tree(tree)

    assert not os.path.lexists(tree)
    assert (sentinel / "keep.txt").read_text() == "must survive"
    remove_tree(tree)  # already gone: nothing to do


def test_a_deep_tree_is_removed_with_a_few_file_descriptors(tmp_path: Path) -> None:
    """1,200 levels while at most 32 descriptors may be open: no descriptor per level."""
    tree = tmp_path / "tree"
    deep_tree(tree, 1200, file_each_level=True)
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from javia_agent._fs import remove_tree\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))\n"
        "remove_tree(Path(sys.argv[1]))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tree)], check=True, timeout=120)
    assert not os.path.lexists(tree)


def test_files_links_and_wide_trees_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("k")
    link = tmp_path / "link"
    link.symlink_to(target)
    remove_tree(link)
    assert not os.path.lexists(link) and (target / "keep").exists()

    single = tmp_path / "file"
    single.write_text("x")
    remove_tree(single)
    assert not single.exists()

    wide = tmp_path / "wide"
    for index in range(300):
        (wide / f"d{index}" / "sub").mkdir(parents=True)
        (wide / f"d{index}" / "sub" / "f").write_text("x")
        (wide / f"l{index}").symlink_to(target)
    remove_tree(wide)
    assert not wide.exists() and (target / "keep").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_what_cannot_be_removed_is_raised_after_removing_the_rest(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "locked").mkdir(parents=True)
    (tree / "locked" / "f").write_text("x")
    (tree / "free").mkdir()
    (tree / "free" / "f").write_text("x")
    (tree / "locked").chmod(0o500)
    try:
        with pytest.raises(OSError, match="cannot remove all of"):
            remove_tree(tree)
        assert not (tree / "free").exists() and (tree / "locked" / "f").exists()
    finally:
        (tree / "locked").chmod(0o700)


def test_only_leftovers_of_interrupted_atomic_writes_are_removed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    atomic_write(state / "state.json", b"{}")
    leftovers = [state / ".state.json.a1b2c3d4.tmp", state / ".app.pid.zz_9x8y7.tmp"]
    for path in leftovers:
        path.write_text("half")
    others = [
        state / "state.json",
        state / ".state.json.tmp",  # not the pattern atomic_write uses
        state / "notes.a1b2c3d4.tmp",
        state / ".other.json.a1b2c3d4.tmp",  # not a name we asked for
    ]
    for path in others[1:]:
        path.write_text("keep")
    (state / ".app.pid.dir00000.tmp").mkdir()  # not a regular file
    sub = state / "sub"
    sub.mkdir()
    (sub / ".state.json.a1b2c3d4.tmp").write_text("keep: another directory")

    removed = remove_interrupted_writes(state, {"state.json", "app.pid"})

    assert sorted(removed) == sorted(leftovers)
    assert all(path.exists() for path in others)
    assert (state / ".app.pid.dir00000.tmp").is_dir()
    assert (sub / ".state.json.a1b2c3d4.tmp").exists()
    assert remove_interrupted_writes(tmp_path / "missing") == []
