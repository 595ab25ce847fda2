"""The agent's package verification and safe extraction (DESIGN.md section 3).

Hostile packages here are signed by a key the keyring trusts and their archive
hash matches the manifest, so the per-member checks are the only defence; each
must be refused with a one-line reason, leave no file behind (the whole temp
tree is compared before and after) and create no destination.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from javia_agent import verification
from javia_agent.verification import (
    check_payload,
    extract_payload,
    verify_archive,
    verify_metadata,
    verify_package_dir,
)
from javia_core.errors import ManifestError, PackageError, SignatureError
from javia_core.manifest import FileEntry, Manifest, canonical_json, sign_manifest
from javia_core.models import UpdateType
from javia_core.package_reader import read_package_dir
from javia_core.versioning import Version
from javia_updates.packaging import build_package
from packages_helpers import (
    NOW,
    Member,
    entry,
    keyring_for,
    make_app,
    sign_package_dir,
    snapshot,
    write_archive,
    write_signed_package,
)

KEY = Ed25519PrivateKey.generate()
KEYRING = keyring_for(KEY)
MiB = 1024 * 1024


@dataclass
class Layout:
    root: Path
    package: Path
    releases: Path
    destination: Path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    releases = tmp_path / "releases"
    releases.mkdir()
    return Layout(tmp_path, tmp_path / "pkg", releases, releases / "v1.0.0")


def build(app: Path, out: Path, version: str = "v1.0.0", key: Ed25519PrivateKey = KEY):
    return build_package(
        app,
        out,
        version=Version.parse(version),
        update_type=UpdateType.URGENT,
        description="test",
        system_packages=(),
        private_key=key,
        now=NOW,
        write_version_file=False,
    )


def assert_refused(
    layout: Layout,
    action: Callable[[], object],
    fragment: str,
    escapes: tuple[Path, ...] = (),
    error: type[Exception] = PackageError,
) -> str:
    before = snapshot(layout.root)
    with pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    assert fragment in message, message
    assert "\n" not in message
    assert snapshot(layout.root) == before, "something was written"
    assert not os.path.lexists(layout.destination)
    assert not list(layout.releases.glob(".staging-*"))
    for target in escapes:
        assert not os.path.lexists(target), f"{target} was written"
    return message


# ---------------------------------------------------------------- hostile members


@dataclass(frozen=True)
class Hostile:
    members: list[Member]
    files: list[FileEntry]
    fragment: str
    escapes: tuple[Path, ...] = ()


def _outside(tmp: Path) -> Path:
    return tmp / "escaped.txt"


ESCAPE_IN_TMP = Path("/tmp") / f"javia-escape-{secrets.token_hex(6)}"
ESCAPE_IN_ETC = Path("/etc") / f"javia-escape-{secrets.token_hex(6)}"

HOSTILE: dict[str, Callable[[Path], Hostile]] = {
    "dot-dot escape": lambda tmp: Hostile(
        [Member("../../escaped.txt", b"pwned")],
        [entry("escaped.txt", b"pwned")],
        "'../../escaped.txt' has a '..' path component",
        (_outside(tmp),),
    ),
    "dot-dot inside a path": lambda tmp: Hostile(
        [Member("app/../../../escaped.txt", b"pwned")],
        [entry("app/x", b"pwned")],
        "'..' path component",
        (_outside(tmp),),
    ),
    "absolute path /etc": lambda tmp: Hostile(
        [Member(str(ESCAPE_IN_ETC), b"pwned")],
        [entry("x", b"pwned")],
        "has an absolute path",
        (ESCAPE_IN_ETC,),
    ),
    "absolute path /tmp": lambda tmp: Hostile(
        [Member(str(ESCAPE_IN_TMP), b"pwned")],
        [entry("x", b"pwned")],
        "has an absolute path",
        (ESCAPE_IN_TMP,),
    ),
    "backslash path": lambda tmp: Hostile(
        [Member("..\\..\\escaped.txt", b"pwned")],
        [entry("a", b"pwned")],
        "backslash",
    ),
    "dot component": lambda tmp: Hostile(
        [Member("./a.txt", b"a")], [entry("a.txt", b"a")], "empty or '.' path component"
    ),
    "symlink then write through it": lambda tmp: Hostile(
        [
            Member("link", type=tarfile.SYMTYPE, linkname="../.."),
            Member("link/escaped.txt", b"pwned"),
        ],
        [entry("link/escaped.txt", b"pwned")],
        "'link' is a symbolic link (-> '../..')",
        (_outside(tmp),),
    ),
    "symlink to a file": lambda tmp: Hostile(
        [Member("passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        [entry("passwd", b"")],
        "is a symbolic link",
    ),
    "hard link": lambda tmp: Hostile(
        [Member("passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
        [entry("passwd", b"")],
        "'passwd' is a hard link (-> '/etc/passwd')",
    ),
    "fifo": lambda tmp: Hostile(
        [Member("pipe", type=tarfile.FIFOTYPE)], [entry("pipe", b"")], "'pipe' is a FIFO"
    ),
    "character device": lambda tmp: Hostile(
        [Member("null", type=tarfile.CHRTYPE)], [entry("null", b"")], "'null' is a device file"
    ),
    "block device": lambda tmp: Hostile(
        [Member("sda", type=tarfile.BLKTYPE)], [entry("sda", b"")], "'sda' is a device file"
    ),
    "setuid file": lambda tmp: Hostile(
        [Member("run", b"#!/bin/sh\n", mode=0o4755)],
        [entry("run", b"#!/bin/sh\n", mode=0o755)],
        "'run' has mode 4755 with a setuid, setgid or sticky bit",
    ),
    "setgid directory": lambda tmp: Hostile(
        [Member("d", type=tarfile.DIRTYPE, mode=0o2755), Member("d/a", b"a")],
        [entry("d/a", b"a")],
        "'d' has mode 2755",
    ),
    "unlisted member": lambda tmp: Hostile(
        [Member("a.txt", b"a"), Member("evil.py", b"import os")],
        [entry("a.txt", b"a"), entry("b.txt", b"b")],
        "'evil.py' is not listed in the signed manifest",
    ),
    "unlisted directory": lambda tmp: Hostile(
        [Member("cache", type=tarfile.DIRTYPE, mode=0o755), Member("a.txt", b"a")],
        [entry("a.txt", b"a"), entry("b.txt", b"b")],
        "archive directory 'cache' holds no file listed",
    ),
    "listed file missing": lambda tmp: Hostile(
        [Member("a.txt", b"a")],
        [entry("a.txt", b"a"), entry("b.txt", b"b"), entry("c.txt", b"c")],
        "listed file 'b.txt' and 1 more is missing from the archive",
    ),
    "hash differs": lambda tmp: Hostile(
        [Member("a.txt", b"evil")],
        [entry("a.txt", b"good")],
        "'a.txt' has SHA-256",
    ),
    "size differs": lambda tmp: Hostile(
        [Member("a.txt", b"longer")],
        [entry("a.txt", b"good")],
        "'a.txt' is 6 bytes, but the manifest lists 4 bytes",
    ),
    "gzip bomb member past unpacked_size": lambda tmp: Hostile(
        [Member("a.txt", size=64 * MiB)],
        [entry("a.txt", b"\0" * 10)],
        "'a.txt' is 67108864 bytes, but the manifest lists 10 bytes",
    ),
    "gzip bomb in a tar header": lambda tmp: Hostile(
        [Member("a.txt", b"a", pax={"comment": "A" * 16 * MiB})],
        [entry("a.txt", b"a")],
        "archive inflates past",
    ),
    "more members than listed": lambda tmp: Hostile(
        [Member("a.txt", b"a"), Member("a.txt", b"a")],
        [entry("a.txt", b"a")],
        "more members than the 1 the manifest allows",
    ),
    "duplicate member": lambda tmp: Hostile(
        [Member("a.txt", b"a"), Member("a.txt", b"a")],
        [entry("a.txt", b"a"), entry("b.txt", b"b")],
        "'a.txt' appears twice",
    ),
    "group-writable file": lambda tmp: Hostile(
        [Member("run.sh", b"#!/bin/sh\n", mode=0o664)],
        [entry("run.sh", b"#!/bin/sh\n", mode=0o644)],
        "'run.sh' has mode 664, writable by group or others",
    ),
    "world-writable file": lambda tmp: Hostile(
        [Member("app.py", b"print()", mode=0o666)],
        [entry("app.py", b"print()", mode=0o644)],
        "'app.py' has mode 666, writable by group or others",
    ),
    "world-writable directory": lambda tmp: Hostile(
        [Member("d", type=tarfile.DIRTYPE, mode=0o777), Member("d/a", b"a")],
        [entry("d/a", b"a")],
        "'d' has mode 777, writable by group or others",
    ),
    "member past the depth bound": lambda tmp: Hostile(
        [Member("/".join(["d"] * 1000) + "/f", b"a"), Member("a.txt", b"a")],
        [entry("a.txt", b"a"), entry("b.txt", b"b")],
        "1001 components deep (at most 32)",
    ),
    "member name past the length bound": lambda tmp: Hostile(
        [Member("n" * 300, b"a"), Member("a.txt", b"a")],
        [entry("a.txt", b"a"), entry("b.txt", b"b")],
        "a component of 300 bytes",
    ),
}


def _write_hostile(layout: Layout, name: str) -> tuple[Manifest, Hostile]:
    case = HOSTILE[name](layout.root)
    manifest = write_signed_package(layout.package, case.members, case.files, KEY)
    return manifest, case


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_member_is_refused_by_extraction(layout: Layout, name: str) -> None:
    manifest, case = _write_hostile(layout, name)
    payload = layout.package / "payload.tar.gz"
    # Signature and archive hash are fine: the member checks must catch it.
    verify_archive(payload, manifest)
    assert_refused(
        layout,
        lambda: extract_payload(payload, manifest, layout.destination),
        case.fragment,
        case.escapes,
    )


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_member_is_refused_by_verify_without_writing(layout: Layout, name: str) -> None:
    _, case = _write_hostile(layout, name)
    assert_refused(
        layout,
        lambda: verify_package_dir(layout.package, KEYRING, current_version=None),
        case.fragment,
        case.escapes,
    )


def test_a_signed_package_1000_directories_deep_is_refused_with_the_bound_named(
    layout: Layout,
) -> None:
    """Signed by a trusted key, archive hash right: the manifest's path bounds refuse it."""
    deep = "/".join(["d"] * 1000) + "/f.txt"
    layout.package.mkdir()
    write_archive(layout.package / "payload.tar.gz", [Member(deep, b"deep")])
    payload = (layout.package / "payload.tar.gz").read_bytes()
    data = {
        "format": 1,
        "app": "voice",
        "version": "v1.0.0",
        "created_at": "2025-06-01T12:00:00Z",
        "update_type": "instant",
        "description": "deep",
        "system_packages": [],
        "files": [
            {"path": deep, "sha256": hashlib.sha256(b"deep").hexdigest(), "size": 4, "mode": 0o644}
        ],
        "archive": {
            "name": "payload.tar.gz",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        },
        "unpacked_size": 4,
    }
    manifest_bytes = canonical_json(data)
    (layout.package / "manifest.json").write_bytes(manifest_bytes)
    (layout.package / "manifest.sig").write_bytes(sign_manifest(manifest_bytes, KEY).to_bytes())
    message = assert_refused(
        layout,
        lambda: verify_package_dir(layout.package, KEYRING, current_version=None),
        "1001 components deep (at most 32)",
        error=ManifestError,
    )
    assert len(message) < 300


@pytest.mark.parametrize(
    "payload",
    [b"this is not gzip at all" * 10, gzip.compress(b"gzip, but no tar inside" * 100), b""],
    ids=["not gzip", "gzip of garbage", "empty"],
)
def test_payload_that_is_not_a_tar_gz_is_refused(layout: Layout, payload: bytes) -> None:
    layout.package.mkdir()
    (layout.package / "payload.tar.gz").write_bytes(payload)
    manifest = sign_package_dir(layout.package, [entry("a.txt", b"a")], KEY)
    assert_refused(
        layout,
        lambda: extract_payload(layout.package / "payload.tar.gz", manifest, layout.destination),
        "payload is not a readable tar.gz archive",
    )
    assert_refused(
        layout,
        lambda: verify_package_dir(layout.package, KEYRING, current_version=None),
        "payload is not a readable tar.gz archive",
    )


def test_bomb_is_stopped_without_inflating_it(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, _ = _write_hostile(layout, "gzip bomb member past unpacked_size")
    inflated = 0
    real_read = gzip.GzipFile.read

    def counting_read(self: gzip.GzipFile, size: int = -1) -> bytes:
        nonlocal inflated
        data = real_read(self, size)
        inflated += len(data)
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(PackageError):
        extract_payload(layout.package / "payload.tar.gz", manifest, layout.destination)
    assert 0 < inflated < 1 * MiB  # far below the 64 MiB the archive would inflate to


# ---------------------------------------------------------------- signature, archive, versions


@pytest.fixture
def good_package(layout: Layout) -> Path:
    app = make_app(
        layout.root / "app",
        {
            "main.py": "print('hello')\n",
            "voice/wake.py": "WORD = 'javia'\n",
            "bin/run": "#!/bin/sh\n",
        },
    )
    os.chmod(app / "bin" / "run", 0o755)
    build(app, layout.package, version="v1.0.0")
    return layout.package


def test_good_package_verifies_and_extracts(layout: Layout, good_package: Path) -> None:
    verified = verify_package_dir(good_package, KEYRING, current_version=Version.parse("v0.9.0"))
    assert verified.manifest.version == "v1.0.0"
    assert verified.key_id in KEYRING
    before = snapshot(layout.root)
    extract_payload(good_package / "payload.tar.gz", verified.manifest, layout.destination)
    after = snapshot(layout.root)
    created = {path for path in after if path not in before}
    assert created == {
        "releases/v1.0.0",
        "releases/v1.0.0/VERSION",
        "releases/v1.0.0/bin",
        "releases/v1.0.0/bin/run",
        "releases/v1.0.0/main.py",
        "releases/v1.0.0/voice",
        "releases/v1.0.0/voice/wake.py",
    }
    assert (layout.destination / "main.py").read_text() == "print('hello')\n"
    assert (layout.destination / "VERSION").read_text() == "v1.0.0\n"
    assert stat.S_IMODE((layout.destination / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((layout.destination / "main.py").stat().st_mode) == 0o644
    assert stat.S_IMODE(layout.destination.stat().st_mode) == 0o755
    assert not list(layout.releases.glob(".staging-*"))


def test_no_keyring_refuses_a_good_package(layout: Layout, good_package: Path) -> None:
    assert_refused(
        layout,
        lambda: verify_package_dir(good_package, {}, current_version=None),
        "no trusted keys",
        error=SignatureError,
    )


def test_key_not_in_keyring_is_refused(layout: Layout) -> None:
    stranger = Ed25519PrivateKey.generate()
    app = make_app(layout.root / "app", {"main.py": ""})
    build(app, layout.package, key=stranger)
    assert_refused(
        layout,
        lambda: verify_package_dir(layout.package, KEYRING, current_version=None),
        "which is not in the keyring",
        error=SignatureError,
    )


def test_valid_signature_but_altered_archive_is_refused(layout: Layout, good_package: Path) -> None:
    manifest_bytes, signature_bytes, payload = read_package_dir(good_package)
    manifest = verify_metadata(
        manifest_bytes, signature_bytes, KEYRING, current_version=None
    ).manifest
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    message = assert_refused(
        layout, lambda: extract_payload(payload, manifest, layout.destination), "payload SHA-256 is"
    )
    assert manifest.archive.sha256 in message
    assert_refused(
        layout,
        lambda: verify_package_dir(good_package, KEYRING, current_version=None),
        "payload SHA-256 is",
    )
    payload.write_bytes(bytes(data) + b"extra")
    assert_refused(
        layout,
        lambda: verify_archive(payload, manifest),
        f"payload is {len(data) + 5} bytes, but the signed manifest says {len(data)} bytes",
    )


def test_archive_is_not_opened_before_its_hash_checks_out(
    layout: Layout, good_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real_open = tarfile.open
    real_gzip = gzip.GzipFile

    def recording_open(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        opened.append(("tar", args, kwargs))
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    class RecordingGzip(real_gzip):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            opened.append(("gzip", args, kwargs))
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile, "open", recording_open)
    monkeypatch.setattr(gzip, "GzipFile", RecordingGzip)
    manifest_bytes, _, payload = read_package_dir(good_package)
    manifest = Manifest.from_bytes(manifest_bytes)
    original = payload.read_bytes()
    tampered = bytearray(original)
    tampered[-10] ^= 0x01
    payload.write_bytes(bytes(tampered))
    with pytest.raises(PackageError, match="SHA-256"):
        extract_payload(payload, manifest, layout.destination)
    with pytest.raises(PackageError, match="SHA-256"):
        check_payload(payload, manifest)
    assert opened == []
    # Control: the same recorder sees the archive opened once the hash matches.
    payload.write_bytes(original)
    check_payload(payload, manifest)
    assert [kind for kind, *_ in opened] == ["gzip", "tar"]


@pytest.mark.parametrize(
    ("current", "fragment"),
    [
        ("v1.2.0", "v1.0.0 is not newer than the running v1.2.0: refusing a downgrade"),
        ("v1.0.0", "v1.0.0 is not newer than the running v1.0.0"),
        ("v1.0.1", "refusing a downgrade"),
    ],
)
def test_signed_older_or_same_version_is_refused(
    layout: Layout, good_package: Path, current: str, fragment: str
) -> None:
    assert_refused(
        layout,
        lambda: verify_package_dir(good_package, KEYRING, current_version=Version.parse(current)),
        fragment,
    )
    manifest_bytes, signature_bytes, _ = read_package_dir(good_package)
    with pytest.raises(PackageError, match=fragment):
        verify_metadata(
            manifest_bytes, signature_bytes, KEYRING, current_version=Version.parse(current)
        )


def test_numeric_order_decides_what_is_newer(layout: Layout) -> None:
    app = make_app(layout.root / "app", {"main.py": ""})
    build(app, layout.root / "v1.10.0", version="v1.10.0")
    build(app, layout.root / "v1.9.0", version="v1.9.0")
    # As text "v1.10.0" < "v1.9.0"; as versions it is newer and must be accepted.
    verified = verify_package_dir(
        layout.root / "v1.10.0", KEYRING, current_version=Version.parse("v1.9.0")
    )
    assert verified.manifest.version == "v1.10.0"
    with pytest.raises(PackageError, match="v1.9.0 is not newer than the running v1.10.0"):
        verify_package_dir(
            layout.root / "v1.9.0", KEYRING, current_version=Version.parse("v1.10.0")
        )


def test_mix_and_match_of_update_and_package_is_refused(good_package: Path) -> None:
    manifest_bytes, signature_bytes, _ = read_package_dir(good_package)
    with pytest.raises(PackageError, match="signed manifest is for v1.0.0, but v1.3.0 was offered"):
        verify_metadata(
            manifest_bytes,
            signature_bytes,
            KEYRING,
            current_version=None,
            expected_version="v1.3.0",
        )
    with pytest.raises(PackageError, match="for app 'app', but this device runs 'other'"):
        verify_metadata(
            manifest_bytes, signature_bytes, KEYRING, current_version=None, expected_app="other"
        )
    verified = verify_metadata(
        manifest_bytes,
        signature_bytes,
        KEYRING,
        current_version=None,
        expected_version="v1.0.0",
        expected_app="app",
    )
    assert verified.manifest.app == "app"


def test_existing_destination_is_never_replaced(layout: Layout, good_package: Path) -> None:
    manifest = Manifest.from_bytes((good_package / "manifest.json").read_bytes())
    layout.destination.mkdir()
    (layout.destination / "keep.txt").write_text("old release")
    with pytest.raises(PackageError, match="already exists"):
        extract_payload(good_package / "payload.tar.gz", manifest, layout.destination)
    assert [p.name for p in layout.destination.iterdir()] == ["keep.txt"]
    assert not list(layout.releases.glob(".staging-*"))


def test_missing_parent_directory_is_refused(layout: Layout, good_package: Path) -> None:
    manifest = Manifest.from_bytes((good_package / "manifest.json").read_bytes())
    with pytest.raises(PackageError, match="is not a directory"):
        extract_payload(good_package / "payload.tar.gz", manifest, layout.root / "nope" / "v1")
    assert not (layout.root / "nope").exists()


def test_check_payload_writes_nothing(layout: Layout, good_package: Path) -> None:
    manifest = Manifest.from_bytes((good_package / "manifest.json").read_bytes())
    before = snapshot(layout.root)
    check_payload(good_package / "payload.tar.gz", manifest)
    assert snapshot(layout.root) == before


def test_a_failure_midway_removes_what_was_written(layout: Layout) -> None:
    # Two good files, then a bad one: the good ones were written into staging
    # and must be gone afterwards.
    files = [entry("a.txt", b"a" * 1000), entry("b.txt", b"b" * 1000), entry("c.txt", b"c")]
    members = [Member("a.txt", b"a" * 1000), Member("b.txt", b"b" * 1000), Member("c.txt", b"X")]
    manifest = write_signed_package(layout.package, members, files, KEY)
    assert_refused(
        layout,
        lambda: extract_payload(layout.package / "payload.tar.gz", manifest, layout.destination),
        "'c.txt' has SHA-256",
    )


def test_staging_directory_lies_next_to_the_destination(
    layout: Layout, good_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = Manifest.from_bytes((good_package / "manifest.json").read_bytes())
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def recording_rename(source: str, target: str) -> None:
        renames.append((str(source), str(target)))
        real_rename(source, target)

    monkeypatch.setattr(verification.os, "rename", recording_rename)
    extract_payload(good_package / "payload.tar.gz", manifest, layout.destination)
    assert len(renames) == 1
    source, target = renames[0]
    assert Path(source).parent == layout.releases
    assert Path(source).name.startswith(".staging-v1.0.0-")
    assert target == str(layout.destination)


# ---------------------------------------------------------------- a realistic tree


def _site_package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_real_third_party_trees_round_trip_byte_for_byte(layout: Layout) -> None:
    app = layout.root / "app"
    for name in ("rich", "cryptography"):
        shutil.copytree(
            _site_package(name), app / "vendor" / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    (app / "VERSION").write_text("v0.9.0\n")
    source_files = {
        path.relative_to(app).as_posix(): path
        for path in app.rglob("*")
        if path.is_file() and path.name != "VERSION"
    }
    assert len(source_files) > 150
    assert any(path.endswith(".so") for path in source_files)  # binary content too

    built = build(app, layout.package, version="v1.0.0")
    verified = verify_package_dir(layout.package, KEYRING, current_version=Version.parse("v0.9.0"))
    extract_payload(built.payload_path, verified.manifest, layout.destination)

    extracted = {
        path.relative_to(layout.destination).as_posix(): path
        for path in layout.destination.rglob("*")
        if path.is_file()
    }
    assert set(extracted) == set(source_files) | {"VERSION"}
    for relative, source in source_files.items():
        target = extracted[relative]
        assert target.read_bytes() == source.read_bytes(), relative
        assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(source.stat().st_mode) & 0o777
    assert (layout.destination / "VERSION").read_text() == "v1.0.0\n"
    assert not any(path.is_symlink() for path in layout.destination.rglob("*"))


def test_verification_imports_nothing_a_device_does_not_install() -> None:
    # DESIGN.md section 1: the agent must not pull in server-only libraries.
    code = (
        "import sys, javia_agent.verification, javia_updates.keys;"
        "bad = sorted(m for m in ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'questionary')"
        " if m in sys.modules); print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
