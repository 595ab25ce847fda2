"""The manifest and its signature (DESIGN.md section 3): canonical bytes, Ed25519, fail closed."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from javia_core.errors import ManifestError, SignatureError
from javia_core.manifest import (
    MAX_PATH_BYTES,
    MAX_PATH_COMPONENT_BYTES,
    MAX_PATH_COMPONENTS,
    ArchiveInfo,
    FileEntry,
    Manifest,
    Signature,
    canonical_json,
    key_id_for,
    sign_manifest,
    verify_manifest,
)
from javia_core.models import UpdateType

SIGNING_KEY = Ed25519PrivateKey.generate()
KEYRING = {key_id_for(SIGNING_KEY.public_key()): SIGNING_KEY.public_key()}

hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
segment = st.text(
    alphabet=st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda part: part not in (".", ".."))


@st.composite
def file_lists(draw: st.DrawFn) -> tuple[FileEntry, ...]:
    paths = draw(st.sets(st.lists(segment, min_size=1, max_size=4).map("/".join), max_size=12))
    # No file may lie below another file: keep the shallowest of such paths.
    kept = sorted(
        path
        for path in paths
        if not any(path.startswith(other + "/") for other in paths if other != path)
    )
    return tuple(
        FileEntry(
            path=path,
            sha256=draw(hex64),
            size=draw(st.integers(min_value=0, max_value=2**40)),
            # Group- and other-writable modes are refused (see the mode tests below).
            mode=draw(st.integers(min_value=0, max_value=0o777).map(lambda mode: mode & ~0o022)),
        )
        for path in kept
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    files = draw(file_lists())
    major, minor, patch = (draw(st.integers(min_value=0, max_value=10**6)) for _ in range(3))
    return Manifest(
        app=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)),
        version=f"v{major}.{minor}.{patch}",
        created_at=draw(
            st.datetimes(
                min_value=datetime(1, 1, 2),
                max_value=datetime(9999, 12, 30),
                timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
            )
        ),
        update_type=draw(st.sampled_from(list(UpdateType))),
        description=draw(st.text(max_size=200)),
        system_packages=tuple(
            draw(
                st.lists(
                    st.from_regex(
                        r"[a-z0-9][a-z0-9+.-]{1,20}(=[0-9][a-z0-9.+~-]{0,8})?", fullmatch=True
                    ),
                    max_size=4,
                )
            )
        ),
        files=files,
        archive=ArchiveInfo(
            sha256=draw(hex64), size=draw(st.integers(min_value=0, max_value=2**40))
        ),
        unpacked_size=sum(entry.size for entry in files),
    )


def small_manifest(**changes: object) -> Manifest:
    data: dict[str, object] = {
        "app": "voice-assistant",
        "version": "v1.2.3",
        "created_at": datetime(2025, 3, 30, 1, 30, tzinfo=UTC),
        "update_type": UpdateType.URGENT,
        "description": "Fix wake word",
        "system_packages": ("sox", "libasound2=1.2.8-1"),
        "files": (
            FileEntry(path="VERSION", sha256="a" * 64, size=7, mode=0o644),
            FileEntry(path="app/main.py", sha256="b" * 64, size=100, mode=0o755),
        ),
        "archive": ArchiveInfo(sha256="c" * 64, size=321),
        "unpacked_size": 107,
    }
    data.update(changes)
    return Manifest(**data)  # type: ignore[arg-type]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(manifests())
def test_canonical_bytes_round_trip_and_are_stable(manifest: Manifest) -> None:
    data = manifest.to_bytes()
    parsed = Manifest.from_bytes(data)
    assert parsed == manifest
    assert parsed.to_bytes() == data
    # Canonical JSON: sorted keys, no whitespace between tokens.
    value = json.loads(data)
    assert (
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        == data
    )


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_signature_verifies_and_any_changed_byte_is_refused(manifest: Manifest) -> None:
    data = manifest.to_bytes()
    signature = sign_manifest(data, SIGNING_KEY).to_bytes()
    assert verify_manifest(data, signature, KEYRING) == manifest
    for index in {0, len(data) // 2, len(data) - 1}:
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        with pytest.raises(SignatureError, match="does not match"):
            verify_manifest(bytes(tampered), signature, KEYRING)


def test_tampering_with_the_update_type_is_detected() -> None:
    data = small_manifest().to_bytes()
    signature = sign_manifest(data, SIGNING_KEY).to_bytes()
    forged = data.replace(b'"urgent"', b'"instant"')
    assert forged != data
    with pytest.raises(SignatureError, match="does not match the manifest"):
        verify_manifest(forged, signature, KEYRING)


def test_a_key_outside_the_keyring_is_refused() -> None:
    data = small_manifest().to_bytes()
    stranger = Ed25519PrivateKey.generate()
    signature = sign_manifest(data, stranger).to_bytes()
    with pytest.raises(SignatureError, match="not in the keyring") as caught:
        verify_manifest(data, signature, KEYRING)
    assert key_id_for(stranger.public_key()) in str(caught.value)


def test_a_signature_relabelled_with_a_trusted_key_id_is_refused() -> None:
    data = small_manifest().to_bytes()
    stranger = Ed25519PrivateKey.generate()
    forged = Signature(
        key_id=key_id_for(SIGNING_KEY.public_key()),
        signature=sign_manifest(data, stranger).signature,
    ).to_bytes()
    with pytest.raises(SignatureError, match="does not match"):
        verify_manifest(data, forged, KEYRING)


def test_empty_keyring_fails_closed_even_for_a_valid_signature() -> None:
    data = small_manifest().to_bytes()
    signature = sign_manifest(data, SIGNING_KEY).to_bytes()
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_manifest(data, signature, {})


@pytest.mark.parametrize(
    ("signature_bytes", "expected"),
    [
        (b"", "empty"),
        (b"\x00\xff garbage", "not JSON"),
        (b"[]", "not JSON"),
        (b'{"algorithm":"ed25519","key_id":"0123456789abcdef"}', "not JSON"),
        (b'{"algorithm":"rsa","key_id":"0123456789abcdef","signature":"AA=="}', "algorithm"),
        (b'{"algorithm":"ed25519","key_id":"XYZ","signature":"AA=="}', "16 lower-case hex"),
        (
            b'{"algorithm":"ed25519","key_id":"0123456789abcdef","signature":"not base64!"}',
            "base64",
        ),
        (b'{"algorithm":"ed25519","key_id":"0123456789abcdef","signature":"AAAA"}', "expected 64"),
        (b"x" * 5000, "larger than"),
    ],
)
def test_malformed_signature_files_are_refused(signature_bytes: bytes, expected: str) -> None:
    data = small_manifest().to_bytes()
    with pytest.raises(SignatureError, match=expected):
        verify_manifest(data, signature_bytes, KEYRING)


def test_signed_bytes_that_are_not_a_manifest_are_refused_after_the_signature() -> None:
    data = b'{"app":"x"}'
    signature = sign_manifest(data, SIGNING_KEY).to_bytes()
    with pytest.raises(ManifestError, match="invalid manifest"):
        verify_manifest(data, signature, KEYRING)


def test_key_id_is_the_first_16_hex_digits_of_sha256_of_the_raw_public_key() -> None:
    raw = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key_id_for(SIGNING_KEY.public_key()) == hashlib.sha256(raw).hexdigest()[:16]
    signature = sign_manifest(b"abc", SIGNING_KEY)
    assert len(base64.b64decode(signature.signature)) == 64


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"unpacked_size": 106}, "unpacked_size"),
        ({"version": "1.2.3"}, "version"),
        ({"app": "../etc"}, "app"),
        ({"system_packages": ("-oAPT::Get::Something=1",)}, "system_packages"),
        ({"created_at": datetime(2025, 1, 1)}, "created_at"),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    data = small_manifest().to_json_dict()
    data.update({key: value for key, value in changes.items()})
    if isinstance(data.get("created_at"), datetime):
        data["created_at"] = data["created_at"].isoformat()  # type: ignore[union-attr]
    if isinstance(data.get("system_packages"), tuple):
        data["system_packages"] = list(data["system_packages"])  # type: ignore[arg-type]
    with pytest.raises(ManifestError) as caught:
        Manifest.from_bytes(json.dumps(data).encode())
    assert field in str(caught.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", ""])
def test_unsafe_file_paths_cannot_be_listed(path: str) -> None:
    with pytest.raises(ValueError, match="unsafe file path"):
        FileEntry(path=path, sha256="a" * 64, size=1, mode=0o644)


def test_a_mode_with_setuid_cannot_be_listed() -> None:
    with pytest.raises(ValueError):
        FileEntry(path="a", sha256="a" * 64, size=1, mode=0o4755)


def test_files_must_be_sorted_unique_and_not_nested_below_a_file() -> None:
    one = FileEntry(path="a", sha256="a" * 64, size=1, mode=0o644)
    below = FileEntry(path="a/b", sha256="a" * 64, size=1, mode=0o644)
    two = FileEntry(path="b", sha256="a" * 64, size=1, mode=0o644)
    with pytest.raises(ValueError, match="sorted"):
        small_manifest(files=(two, one), unpacked_size=2)
    with pytest.raises(ValueError, match="sorted"):
        small_manifest(files=(one, one), unpacked_size=2)
    with pytest.raises(ValueError, match="lies below"):
        small_manifest(files=(one, below), unpacked_size=2)


@pytest.mark.parametrize(
    ("created_at", "written"),
    [
        (
            datetime(2025, 3, 30, 3, 30, 15, 999, tzinfo=timezone(timedelta(hours=2))),
            "2025-03-30T01:30:15Z",
        ),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00Z"),
    ],
)
def test_created_at_is_written_as_utc_whole_seconds(created_at: datetime, written: str) -> None:
    manifest = small_manifest(created_at=created_at)
    assert json.loads(manifest.to_bytes())["created_at"] == written
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


# ------------------------------------------------- path bounds and modes (issue 11)


def _signed_with_file(path: str, mode: int = 0o644) -> tuple[bytes, bytes]:
    """Signed manifest bytes listing one file, written without the model's checks."""
    data = small_manifest().to_json_dict()
    data["files"] = [{"path": path, "sha256": "a" * 64, "size": 1, "mode": mode}]
    data["unpacked_size"] = 1
    manifest_bytes = canonical_json(data)
    return manifest_bytes, sign_manifest(manifest_bytes, SIGNING_KEY).to_bytes()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/".join(["d"] * 1000) + "/f", "components deep (at most 32)"),
        ("/".join(["d"] * MAX_PATH_COMPONENTS) + "/f", "33 components deep"),
        ("x" * (MAX_PATH_COMPONENT_BYTES + 1), "a component of 256 bytes (at most 255"),
        ("é" * 128, "a component of 256 bytes"),
        ("/".join(["y" * 200] * 6), "bytes long (at most 1024 bytes)"),
    ],
)
def test_a_signed_manifest_with_a_path_past_the_bounds_is_refused(path: str, words: str) -> None:
    manifest_bytes, signature_bytes = _signed_with_file(path)
    with pytest.raises(ManifestError, match="files.0.path") as caught:
        verify_manifest(manifest_bytes, signature_bytes, KEYRING)
    assert words in str(caught.value)
    assert len(str(caught.value)) < 400  # one readable line, not the whole path


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet="abé", min_size=1, max_size=MAX_PATH_COMPONENT_BYTES // 2 + 20),
        min_size=1,
        max_size=MAX_PATH_COMPONENTS + 4,
    )
)
def test_a_path_is_listed_if_and_only_if_it_keeps_every_bound(parts: list[str]) -> None:
    path = "/".join(parts)
    within = (
        len(parts) <= MAX_PATH_COMPONENTS
        and max(len(part.encode()) for part in parts) <= MAX_PATH_COMPONENT_BYTES
        and len(path.encode()) <= MAX_PATH_BYTES
    )
    if within:
        assert FileEntry(path=path, sha256="a" * 64, size=1, mode=0o644).path == path
    else:
        with pytest.raises(ValueError):
            FileEntry(path=path, sha256="a" * 64, size=1, mode=0o644)


def test_a_path_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid UTF-8"):
        FileEntry(path="a/\ud800", sha256="a" * 64, size=1, mode=0o644)


@pytest.mark.parametrize("mode", [0o666, 0o777, 0o664, 0o646, 0o620, 0o602])
def test_a_group_or_other_writable_mode_is_refused(mode: int) -> None:
    manifest_bytes, signature_bytes = _signed_with_file("app.py", mode)
    with pytest.raises(ManifestError, match="group- or other-writable"):
        verify_manifest(manifest_bytes, signature_bytes, KEYRING)


@pytest.mark.parametrize("mode", [0o644, 0o755, 0o600, 0o700, 0o444, 0o555, 0o0])
def test_modes_without_group_or_other_write_are_listed(mode: int) -> None:
    assert FileEntry(path="a", sha256="a" * 64, size=1, mode=mode).mode == mode
