"""Building packages from an application directory (DESIGN.md section 3), operator side."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from javia_core.errors import ManifestError, PackageError, VersionError
from javia_core.manifest import verify_manifest
from javia_core.models import UpdateType
from javia_core.package_reader import read_package_dir
from javia_core.versioning import Version
from javia_updates.packaging import (
    PAYLOAD_MTIME,
    BuiltPackage,
    build_package,
    collect_files,
    normalized_mode,
    read_app_version,
    sanitize_app_name,
)
from packages_helpers import NOW, keyring_for, make_app

KEY = Ed25519PrivateKey.generate()


def build(app: Path, out: Path, version: str = "v1.1.0", **options: object) -> BuiltPackage:
    arguments: dict[str, object] = {
        "version": Version.parse(version),
        "update_type": UpdateType.SCHEDULED,
        "description": "nightly",
        "system_packages": (),
        "private_key": KEY,
        "now": NOW,
    }
    arguments.update(options)
    return build_package(app, out, **arguments)  # type: ignore[arg-type]


def paths_of(app: Path) -> list[str]:
    return [source.path for source in collect_files(app)]


def test_secrets_and_junk_are_left_out_by_default(tmp_path: Path) -> None:
    app = make_app(
        tmp_path / "app",
        {
            "main.py": "print('hi')",
            ".env": "API_KEY=secret",
            ".env.local": "API_KEY=secret",
            "config/.env.production": "API_KEY=secret",
            ".git/config": "[core]",
            ".git/objects/ab/cdef": "blob",
            ".github/workflows/ci.yml": "on: push",  # not .git/
            "pkg/__pycache__/mod.cpython-311.pyc": b"\x00",
            "pkg/mod.py": "x = 1",
            "pkg/stale.pyc": b"\x00",
            ".venv/lib/site.py": "venv",
            "environment.md": "kept: only names starting with .env are secrets",
        },
    )
    # A virtualenv full of symlinks must not trip the symlink refusal: it is excluded.
    os.symlink("/usr/bin/python3", app / ".venv" / "python")
    assert paths_of(app) == [
        ".github/workflows/ci.yml",
        "VERSION",
        "environment.md",
        "main.py",
        "pkg/mod.py",
    ]


def test_javiaignore_patterns_are_applied_like_gitignore(tmp_path: Path) -> None:
    app = make_app(
        tmp_path / "app",
        {
            ".javiaignore": "# comments and blank lines are skipped\n\n*.log\n!keep.log\nbuild/\n/secret.txt\ndocs/*.tmp\n",
            "main.py": "",
            "debug.log": "",
            "sub/trace.log": "",
            "keep.log": "",
            "build/out.bin": "",
            "sub/build/out.bin": "",
            "build.py": "",  # 'build/' only matches directories
            "secret.txt": "",
            "sub/secret.txt": "",  # '/secret.txt' is anchored to the root
            "docs/a.tmp": "",
            "docs/a.md": "",
        },
    )
    assert paths_of(app) == [
        ".javiaignore",
        "VERSION",
        "build.py",
        "docs/a.md",
        "keep.log",
        "main.py",
        "sub/secret.txt",
    ]


def test_javiaignore_double_star_and_negation_match_as_in_git(tmp_path: Path) -> None:
    app = make_app(
        tmp_path / "app",
        {
            ".javiaignore": "**/secrets\n*.txt\n!keep.txt\n!secrets/keep.txt\n",
            "main.py": "",
            "secrets/token": "",  # '**/secrets' matches at the top level too
            "secrets/keep.txt": "",  # inside an excluded directory: not re-included (git)
            "sub/secrets/token": "",
            "notes.txt": "",
            "sub/notes.txt": "",
            "keep.txt": "",  # '!keep.txt' re-includes it at any depth
            "sub/keep.txt": "",
        },
    )
    assert paths_of(app) == [".javiaignore", "VERSION", "keep.txt", "main.py", "sub/keep.txt"]


def test_a_symlink_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"models/real.bin": b"weights"})
    os.symlink("real.bin", app / "models" / "current.bin")
    with pytest.raises(PackageError) as caught:
        build(app, tmp_path / "out")
    message = str(caught.value)
    assert "models/current.bin" in message
    assert "symbolic link" in message and "symlinks are refused" in message
    assert "copy the target in instead" in message
    assert not (tmp_path / "out").exists()
    assert (app / "VERSION").read_text() == "v1.0.0\n"


def test_a_symlinked_directory_is_refused_not_followed(tmp_path: Path) -> None:
    outside = make_app(tmp_path / "outside", {"id_rsa": "private"}, version=None)
    app = make_app(tmp_path / "app", {"main.py": ""})
    os.symlink(outside, app / "data")
    with pytest.raises(PackageError, match="data is a symbolic link"):
        collect_files(app)


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    os.mkfifo(app / "control")
    with pytest.raises(PackageError, match="control is not a regular file"):
        collect_files(app)


def test_special_mode_bits_are_stripped(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"bin/run": "#!/bin/sh\n", "data.txt": "x"})
    os.chmod(app / "bin/run", 0o4755)
    os.chmod(app / "data.txt", 0o1640)
    files = {source.path: source.mode for source in collect_files(app)}
    assert files["bin/run"] == 0o755
    assert files["data.txt"] == 0o644
    built = build(app, tmp_path / "out")
    modes = {item.path: item.mode for item in built.manifest.files}
    assert modes["bin/run"] == 0o755
    with tarfile.open(built.payload_path) as archive:
        assert archive.getmember("bin/run").mode == 0o755


def test_package_is_signed_lists_every_file_and_holds_the_new_version(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": "print(1)\n", "lib/util.py": "u = 2\n"})
    built = build(
        app, tmp_path / "out", version="v1.1.0", system_packages=["sox", "libasound2=1.2.8-1"]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "payload.tar.gz",
    ]
    manifest = verify_manifest(
        built.manifest_path.read_bytes(), built.signature_path.read_bytes(), keyring_for(KEY)
    )
    assert manifest == built.manifest
    assert manifest.version == "v1.1.0"
    assert manifest.app == "app"
    assert manifest.update_type is UpdateType.SCHEDULED
    assert manifest.system_packages == ("sox", "libasound2=1.2.8-1")
    assert manifest.created_at == NOW
    payload = built.payload_path.read_bytes()
    assert manifest.archive.size == len(payload)
    assert manifest.archive.sha256 == hashlib.sha256(payload).hexdigest()

    expected = {
        "VERSION": b"v1.1.0\n",
        "lib/util.py": b"u = 2\n",
        "main.py": b"print(1)\n",
    }
    assert [item.path for item in manifest.files] == sorted(expected)
    for item in manifest.files:
        assert item.sha256 == hashlib.sha256(expected[item.path]).hexdigest()
        assert item.size == len(expected[item.path])
    assert manifest.unpacked_size == sum(len(data) for data in expected.values())
    # The new version is written into the source tree once the package is complete.
    assert (app / "VERSION").read_text() == "v1.1.0\n"


def test_archive_is_normalised(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"a/b/c.txt": "c", "a/d.txt": "d", "z.txt": "z"})
    built = build(app, tmp_path / "out")
    with tarfile.open(built.payload_path, "r:gz") as archive:
        members = archive.getmembers()
    names = [member.name for member in members]
    assert names == sorted(names)
    assert names == ["VERSION", "a", "a/b", "a/b/c.txt", "a/d.txt", "z.txt"]
    for member in members:
        assert member.isfile() or member.isdir()
        assert not member.name.startswith(("/", "./"))
        assert (member.uid, member.gid) == (0, 0)
        assert member.mtime == PAYLOAD_MTIME


def test_same_tree_gives_the_same_payload_bytes(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": "print(1)\n", "pkg/x.bin": os.urandom(5000)})
    first = build(app, tmp_path / "one", write_version_file=False)
    # Touch every file and build at another time: the payload must not change.
    for path in app.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = build(app, tmp_path / "two", write_version_file=False, now=NOW + timedelta(days=3))
    assert first.payload_path.read_bytes() == second.payload_path.read_bytes()
    assert first.manifest.files == second.manifest.files
    assert first.manifest_bytes != second.manifest_bytes  # created_at differs
    (app / "main.py").write_text("print(2)\n")
    third = build(app, tmp_path / "three", write_version_file=False)
    assert third.payload_path.read_bytes() != first.payload_path.read_bytes()


def test_version_file_handling(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    build(app, tmp_path / "one", version="v2.0.0", write_version_file=False)
    assert (app / "VERSION").read_text() == "v1.0.0\n"

    bare = make_app(tmp_path / "bare", {"main.py": ""}, version=None)
    built = build(bare, tmp_path / "two", version="v0.1.0")
    with tarfile.open(built.payload_path) as archive:
        handle = archive.extractfile("VERSION")
        assert handle is not None and handle.read() == b"v0.1.0\n"
    assert read_app_version(bare) == Version.parse("v0.1.0")


def test_read_app_version(tmp_path: Path) -> None:
    assert read_app_version(tmp_path) is None
    (tmp_path / "VERSION").write_text("v1.10.0\n")
    assert read_app_version(tmp_path) == Version.parse("v1.10.0")
    (tmp_path / "VERSION").write_text("v1.10.0")
    assert read_app_version(tmp_path) == Version.parse("v1.10.0")
    for bad in ("1.2.3\n", "v1.2.3\n\n", " v1.2.3\n", "v1.2.3\r\n", "v1.2.3\nv1.2.4\n", ""):
        (tmp_path / "VERSION").write_text(bad)
        with pytest.raises(VersionError) as caught:
            read_app_version(tmp_path)
        assert str(tmp_path / "VERSION") in str(caught.value)
        assert "vX.Y.Z" in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    ["-oAPT::Update::Pre-Invoke::=touch /tmp/pwned", "Sox", "sox;reboot", "a", "sox=", "sox==1"],
)
def test_invalid_system_packages_are_refused_before_anything_is_written(
    tmp_path: Path, bad: str
) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    with pytest.raises(ManifestError, match="Debian package name"):
        build(app, tmp_path / "out", system_packages=["sox", bad])
    assert not (tmp_path / "out").exists()
    assert (app / "VERSION").read_text() == "v1.0.0\n"


def test_an_existing_package_is_not_overwritten(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    first = build(app, tmp_path / "out", version="v1.1.0")
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    with pytest.raises(PackageError, match="already holds a package"):
        build(app, tmp_path / "out", version="v1.2.0")
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()} == before
    assert first.manifest.version == "v1.1.0"
    assert (app / "VERSION").read_text() == "v1.1.0\n"


def test_progress_reports_bytes_up_to_the_total(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"big.bin": os.urandom(3 * 1024 * 1024 + 5), "small.txt": "s"})
    calls: list[tuple[int, int]] = []
    build(app, tmp_path / "out", progress=lambda done, total: calls.append((done, total)))
    total = 3 * 1024 * 1024 + 5 + 1 + len(b"v1.1.0\n")
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_app_name_defaults_to_the_sanitised_directory_name(tmp_path: Path) -> None:
    app = make_app(tmp_path / "my voice app!", {"main.py": ""})
    assert build(app, tmp_path / "out").manifest.app == "my-voice-app-"
    assert sanitize_app_name("__init__") == "init__"
    assert sanitize_app_name("***") == "app"
    assert len(sanitize_app_name("x" * 200)) == 64
    with pytest.raises(ManifestError, match="invalid app name"):
        build(app, tmp_path / "out2", app_name="../evil")


def test_naive_build_time_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    with pytest.raises(ManifestError, match="aware"):
        build(app, tmp_path / "out", now=NOW.replace(tzinfo=None))
    assert not (tmp_path / "out").exists()


def test_read_package_dir(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"main.py": ""})
    built = build(app, tmp_path / "out")
    manifest_bytes, signature_bytes, payload = read_package_dir(tmp_path / "out")
    assert manifest_bytes == built.manifest_bytes
    assert signature_bytes == built.signature_bytes
    assert payload == built.payload_path
    built.signature_path.unlink()
    with pytest.raises(PackageError, match="manifest.sig is missing"):
        read_package_dir(tmp_path / "out")
    with pytest.raises(PackageError, match="does not exist"):
        read_package_dir(tmp_path / "nowhere")


def test_files_are_collected_sorted_with_sizes_and_permission_bits(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"b.txt": "bb", "a/z.txt": "z", "a-b.txt": "ab"})
    os.chmod(app / "b.txt", 0o600)
    files = collect_files(app)
    assert [source.path for source in files] == ["VERSION", "a-b.txt", "a/z.txt", "b.txt"]
    by_path = {source.path: source for source in files}
    assert by_path["b.txt"].size == 2
    assert by_path["b.txt"].mode == 0o644  # normalized_mode: readable, owner-writable only
    assert by_path["a/z.txt"].absolute == app / "a" / "z.txt"
    assert all(stat.S_IMODE(source.mode) == source.mode for source in files)


# --------------------------------------------------------------------------- modes


def test_world_writable_files_are_packaged_owner_writable_only(tmp_path: Path) -> None:
    app = make_app(
        tmp_path / "app",
        {"run.sh": "#!/bin/sh\n", "data.txt": "x", "shared/cache.db": "c", "group.sh": "g"},
    )
    os.chmod(app / "run.sh", 0o777)
    os.chmod(app / "data.txt", 0o666)
    os.chmod(app / "shared", 0o777)
    os.chmod(app / "shared/cache.db", 0o662)
    os.chmod(app / "group.sh", 0o6771)
    built = build(app, tmp_path / "out")
    expected = {
        "VERSION": 0o644,
        "data.txt": 0o644,
        "group.sh": 0o755,
        "run.sh": 0o755,
        "shared/cache.db": 0o644,
    }
    assert {item.path: item.mode for item in built.manifest.files} == expected
    with tarfile.open(built.payload_path) as archive:
        members = {member.name: member.mode for member in archive.getmembers()}
    assert members == {**expected, "shared": 0o755}


def test_normalized_mode_is_0644_or_0755_for_every_mode() -> None:
    for mode in range(0o10000):
        normal = normalized_mode(mode)
        assert normal == (0o755 if mode & 0o111 else 0o644)
        assert normal & 0o7022 == 0  # no group/other write, no setuid/setgid/sticky


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(modes=st.lists(st.integers(0, 0o7777), min_size=1, max_size=4))
def test_every_package_javia_builds_passes_the_devices_verification(
    tmp_path: Path, modes: list[int]
) -> None:
    """Whatever modes the operator's tree has, the device accepts the package
    (javia agent verify: its member checks refuse group/other-writable and
    special bits)."""
    from javia_agent.verification import verify_package_dir

    root = Path(tempfile.mkdtemp(dir=tmp_path))
    app = make_app(root / "app", {f"f{index}.txt": "x" * index for index in range(len(modes))})
    for index, mode in enumerate(modes):
        os.chmod(app / f"f{index}.txt", mode | 0o400)  # readable by the packager, as root is
    built = build(app, root / "out")
    verified = verify_package_dir(root / "out", keyring_for(KEY), current_version=None)
    assert verified.manifest == built.manifest
    assert {item.mode for item in built.manifest.files} <= {0o644, 0o755}
