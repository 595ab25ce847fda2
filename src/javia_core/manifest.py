"""The package manifest and its Ed25519 signature (DESIGN.md section 3). Pure.

A package is three objects: ``manifest.json`` (canonical UTF-8 JSON),
``manifest.sig`` (JSON naming the algorithm, the key id and a base64 signature)
and ``payload.tar.gz``. The signature covers the exact bytes of
``manifest.json``; :func:`verify_manifest` checks those bytes against a trusted
key *before* parsing them, so nothing an attacker wrote is interpreted first.

Everything here works on bytes and key objects; reading key files and keyring
directories lives in :mod:`javia_core.keys`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from javia_core.errors import ManifestError, SignatureError
from javia_core.input_rules import check_display_text
from javia_core.models import UpdateType
from javia_core.versioning import Version

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "PAYLOAD_NAME",
    "APT_NAME_PATTERN",
    "FileEntry",
    "ArchiveInfo",
    "KeyringChanges",
    "MAX_KEYRING_CHANGES",
    "MAX_PATH_BYTES",
    "MAX_PATH_COMPONENTS",
    "MAX_PATH_COMPONENT_BYTES",
    "FORBIDDEN_MODE_BITS",
    "Manifest",
    "Signature",
    "canonical_json",
    "key_id_for",
    "path_bound_violation",
    "sign_manifest",
    "verify_manifest",
    "validate_apt_package",
]

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PAYLOAD_NAME = "payload.tar.gz"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096

# Debian policy 5.6.1: package names are lower case letters, digits, '+', '-' and
# '.', at least two characters, starting with an alphanumeric. An optional
# '=version' pins a version (Debian policy 5.6.12: epoch, upstream, revision).
APT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_APT_VERSION_PATTERN = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_APP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Most keys one package may add, and most key ids it may retire.
MAX_KEYRING_CHANGES = 8
_MAX_PUBLIC_KEY_PEM_CHARS = 1024

#: Most components (directories plus the file name) of one file path in a
#: package. Deep enough for any application tree (a virtualenv's
#: ``lib/python3.11/site-packages/pkg/sub/module.py`` is 7), shallow enough
#: that no tool on the device (``shutil.rmtree`` recurses once per level)
#: meets its recursion limit.
MAX_PATH_COMPONENTS = 32
#: Most UTF-8 bytes of one path component: ``NAME_MAX`` of Linux file systems.
MAX_PATH_COMPONENT_BYTES = 255
#: Most UTF-8 bytes of one relative file path. A quarter of Linux's
#: ``PATH_MAX`` (4096, counting the whole absolute path), leaving the rest
#: for the install root and release directory in front of it, so that every
#: installed file can also be reached by its absolute path.
MAX_PATH_BYTES = 1024
#: Permission bits a packaged file may not carry: group- or other-writable
#: (any local user could change the code the application runs), and the
#: setuid, setgid and sticky bits.
FORBIDDEN_MODE_BITS = 0o7022


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` canonically: sorted keys, ``,``/``:`` separators, UTF-8.

    The same value always gives the same bytes, which is what the signature
    covers (DESIGN.md section 3).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def validate_apt_package(spec: str) -> str:
    """Return ``spec`` if it is a Debian package name with an optional ``=version``.

    Raises:
        ManifestError: when the name breaks Debian policy 5.6.1 (for example it
            starts with ``-`` and would be read as an option by apt).
    """
    if not isinstance(spec, str):
        raise ManifestError("system package must be a string such as 'libasound2' or 'sox=14.4.2'")
    name, sep, version = spec.partition("=")
    if not APT_NAME_PATTERN.fullmatch(name) or (
        sep and not _APT_VERSION_PATTERN.fullmatch(version)
    ):
        raise ManifestError(
            f"invalid system package {spec[:80]!r}: expected a Debian package name "
            "(lower case letters, digits, '+', '-', '.'; starting with a letter or digit), "
            "optionally '=version', e.g. 'libasound2' or 'sox=14.4.2'"
        )
    return spec


def path_bound_violation(path: str) -> str | None:
    """Why ``path`` breaks the size bounds on package paths, or ``None`` if it keeps them.

    ``path`` must encode as UTF-8 (no lone surrogate), and the bounds are :data:`MAX_PATH_COMPONENTS` components,
    :data:`MAX_PATH_COMPONENT_BYTES` UTF-8 bytes per component and
    :data:`MAX_PATH_BYTES` UTF-8 bytes in all. A package whose tree is
    thousands of directories deep would otherwise crash whatever walks it
    recursively on the device.
    """
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text (it holds a lone surrogate)"
    parts = path.split("/")
    if len(parts) > MAX_PATH_COMPONENTS:
        return f"is {len(parts)} components deep (at most {MAX_PATH_COMPONENTS})"
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long (at most {MAX_PATH_BYTES} bytes)"
    longest = max(len(part.encode("utf-8")) for part in parts)
    if longest > MAX_PATH_COMPONENT_BYTES:
        return (
            f"has a component of {longest} bytes (at most {MAX_PATH_COMPONENT_BYTES} bytes "
            "per file or directory name)"
        )
    return None


def _check_relative_path(path: str) -> str:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(
            f"unsafe file path {path[:120]!r}: expected a relative path without '..', '.', "
            "empty parts or backslashes"
        )
    problem = path_bound_violation(path)
    if problem is not None:
        raise ValueError(f"file path {path[:60]!r}{'…' if len(path) > 60 else ''} {problem}")
    return path


def _check_mode(mode: int) -> int:
    if mode & 0o7000:
        raise ValueError(f"mode {mode:o} has a setuid, setgid or sticky bit: not allowed")
    if mode & 0o022:
        raise ValueError(
            f"mode {mode:o} is group- or other-writable: expected a mode without "
            "write permission for group and others (e.g. 644 or 755)"
        )
    return mode


def _check_sha256(value: str) -> str:
    if not _SHA256_PATTERN.fullmatch(value):
        raise ValueError("sha256 must be 64 lower-case hex digits")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class FileEntry(_Frozen):
    """One regular file of the application tree: relative path, SHA-256, bytes, mode.

    ``path`` is relative (no ``..``, ``.``, empty parts, backslashes or NUL)
    and within the size bounds of :func:`path_bound_violation` (at most
    :data:`MAX_PATH_COMPONENTS` components, :data:`MAX_PATH_COMPONENT_BYTES`
    bytes per component, :data:`MAX_PATH_BYTES` bytes). ``mode`` is the file's
    permission bits, at most ``0o755``: nothing in :data:`FORBIDDEN_MODE_BITS`
    (no group- or other-writable bit, no setuid, setgid or sticky bit).
    """

    path: str
    sha256: str
    size: int = Field(ge=0)
    mode: int = Field(
        ge=0,
        le=0o777,
        description="permission bits; not group/other-writable, no setuid/setgid/sticky",
    )

    _path = field_validator("path")(_check_relative_path)

    _mode = field_validator("mode")(_check_mode)

    _sha256 = field_validator("sha256")(_check_sha256)


class ArchiveInfo(_Frozen):
    """The payload archive: file name, SHA-256 and size in bytes."""

    name: str = PAYLOAD_NAME
    sha256: str
    size: int = Field(ge=0)

    _sha256 = field_validator("sha256")(_check_sha256)

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value not in (PAYLOAD_NAME,):
            raise ValueError(f"archive name must be {PAYLOAD_NAME!r}")
        return value


def _public_key_from_pem(pem: str) -> Ed25519PublicKey:
    if not isinstance(pem, str) or len(pem) > _MAX_PUBLIC_KEY_PEM_CHARS:
        raise ValueError("a key to add must be a PEM public key of at most 1024 characters")
    if "PRIVATE KEY" in pem:
        raise ValueError(
            "a key to add must be a public key: a private key never leaves the operator"
        )
    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ValueError(
            "a key to add must be a PEM SubjectPublicKeyInfo Ed25519 public key "
            "('-----BEGIN PUBLIC KEY-----' ...)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("a key to add must be an Ed25519 public key: javia verifies Ed25519 only")
    return key


class KeyringChanges(_Frozen):
    """Changes to the devices' keyring that a signed package carries (key rotation).

    A device applies them only after it has committed the package, whose
    signature it verified with a key it already trusted, so a new key becomes
    trusted through an update signed by an old one (TUF's chained root
    rotation, simplified). See ``docs/security.md`` and
    :func:`javia_agent.keyring.apply_keyring_changes`.

    Attributes:
        add: public keys to trust from now on, each a PEM SubjectPublicKeyInfo
            Ed25519 key (the content of a ``*.pub`` file); at most
            :data:`MAX_KEYRING_CHANGES`.
        retire: key ids (16 lower-case hex digits) to stop trusting; at most
            :data:`MAX_KEYRING_CHANGES`. A device refuses to retire the key
            that signed the package itself, or to end with an empty keyring.
    """

    add: tuple[str, ...] = ()
    retire: tuple[str, ...] = ()

    @field_validator("add")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_KEYRING_CHANGES:
            raise ValueError(f"at most {MAX_KEYRING_CHANGES} keys may be added by one package")
        ids = [key_id_for(_public_key_from_pem(pem)) for pem in value]
        if len(set(ids)) != len(ids):
            raise ValueError("a key is listed twice in keyring.add")
        return value

    @field_validator("retire")
    @classmethod
    def _key_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_KEYRING_CHANGES:
            raise ValueError(f"at most {MAX_KEYRING_CHANGES} keys may be retired by one package")
        for key_id in value:
            if not isinstance(key_id, str) or not _KEY_ID_PATTERN.fullmatch(key_id):
                raise ValueError("keys to retire are key ids of 16 lower-case hex digits")
        if len(set(value)) != len(value):
            raise ValueError("a key id is listed twice in keyring.retire")
        return value

    def model_post_init(self, __context: Any) -> None:
        if not self.add and not self.retire:
            raise ValueError("keyring changes add or retire at least one key (else omit keyring)")
        both = set(self.added_keys()) & set(self.retire)
        if both:
            raise ValueError(f"key {sorted(both)[0]} is both added and retired")

    def added_keys(self) -> dict[str, Ed25519PublicKey]:
        """The keys to add, by key id."""
        keys = (_public_key_from_pem(pem) for pem in self.add)
        return {key_id_for(key): key for key in keys}


#: The longest description a package carries, in characters (DESIGN.md section 3).
MAX_DESCRIPTION_CHARACTERS = 10_000


def check_description_length(description: str) -> str:
    """``description`` if it has at most :data:`MAX_DESCRIPTION_CHARACTERS` characters.

    Raises:
        ManifestError: it is longer; the message gives its length and the limit.
    """
    if len(description) > MAX_DESCRIPTION_CHARACTERS:
        raise ManifestError(
            f"description is {len(description)} characters long: "
            f"at most {MAX_DESCRIPTION_CHARACTERS} are allowed"
        )
    return description


def check_description(description: str) -> str:
    """``description`` if the server accepts it in a published manifest (DESIGN.md section 3).

    At most :data:`MAX_DESCRIPTION_CHARACTERS` characters of display text:
    tab and newline allowed, no control, invisible or bidirectional
    characters (:func:`javia_core.input_rules.check_display_text`). The server
    applies it to every upload; ``javia publish`` (``--dry-run`` too) before
    anything is built or sent.

    Raises:
        ManifestError: naming the description, its length or the refused character.
    """
    check_description_length(description)
    try:
        check_display_text(description, "description", multiline=True)
    except ValueError as error:
        raise ManifestError(str(error)) from None
    return description


class Manifest(_Frozen):
    """The signed description of a package (DESIGN.md section 3).

    ``files`` lists every regular file of the payload, sorted by path and unique;
    ``unpacked_size`` is their total size in bytes; ``created_at`` is UTC.
    """

    format: int = MANIFEST_FORMAT
    app: str
    version: str
    created_at: datetime
    update_type: UpdateType
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARACTERS)
    system_packages: tuple[str, ...] = ()
    files: tuple[FileEntry, ...]
    archive: ArchiveInfo
    unpacked_size: int = Field(ge=0)
    keyring: KeyringChanges | None = Field(
        default=None,
        description="optional key rotation; absent from manifest.json when None",
    )

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format {value}: this javia reads format 1")
        return value

    @field_validator("app")
    @classmethod
    def _app(cls, value: str) -> str:
        if not _APP_PATTERN.fullmatch(value):
            raise ValueError("app must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        Version.parse(value)
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a UTC offset")
        # Whole seconds: the canonical form writes no fraction.
        return value.astimezone(UTC).replace(microsecond=0)

    @field_validator("system_packages")
    @classmethod
    def _apt(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for spec in value:
            try:
                validate_apt_package(spec)
            except ManifestError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("files")
    @classmethod
    def _sorted_unique(cls, value: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        paths = [entry.path for entry in value]
        if paths != sorted(paths) or len(set(paths)) != len(paths):
            raise ValueError("files must be sorted by path with no path listed twice")
        # A path may not be both a file and a directory prefix of another file.
        as_set = set(paths)
        for path in paths:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in as_set:
                    raise ValueError(f"{path!r} lies below {'/'.join(parts[:depth])!r}, a file")
        return value

    def model_post_init(self, __context: Any) -> None:
        total = sum(entry.size for entry in self.files)
        if total != self.unpacked_size:
            raise ValueError(
                f"unpacked_size {self.unpacked_size} does not equal the sum of file sizes {total}"
            )

    @property
    def parsed_version(self) -> Version:
        """The version as a :class:`Version`."""
        return Version.parse(self.version)

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values (times as ISO 8601 with ``Z``)."""
        data = self.model_dump(mode="json")
        # Absent, not null: manifests without keyring changes keep the exact
        # canonical bytes they had before the field existed.
        if data.get("keyring") is None:
            data.pop("keyring", None)
        # isoformat, not strftime("%Y"): the year must always have four digits.
        data["created_at"] = self.created_at.isoformat().replace("+00:00", "Z")
        return data

    def to_bytes(self) -> bytes:
        """The canonical ``manifest.json`` bytes (what gets signed)."""
        return canonical_json(self.to_json_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse ``manifest.json`` bytes.

        Does *not* check a signature: call :func:`verify_manifest` on bytes from
        anyone but yourself.

        Raises:
            ManifestError: for non-UTF-8, non-JSON, a non-object, missing,
                extra or ill-typed fields; the message names the field.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestError(f"manifest is not UTF-8 JSON: {error}") from None
        if not isinstance(value, dict):
            raise ManifestError("manifest must be a JSON object")
        try:
            return cls.model_validate(value)
        except ValidationError as error:
            raise ManifestError(f"invalid manifest: {_describe(error)}") from None


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "manifest"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


class Signature(_Frozen):
    """The content of ``manifest.sig``."""

    algorithm: str = "ed25519"
    key_id: str
    signature: str = Field(description="base64 of the 64-byte Ed25519 signature")

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes of ``manifest.sig``."""
        return canonical_json(self.model_dump())

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """Parse ``manifest.sig`` bytes.

        Raises:
            SignatureError: for an empty, oversized or malformed signature file,
                an algorithm other than ``ed25519``, a key id that is not 16 hex
                digits, or a signature that is not base64 of 64 bytes.
        """
        if not data:
            raise SignatureError("signature file is empty")
        if len(data) > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"signature file is larger than {MAX_SIGNATURE_BYTES} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
            parsed = cls.model_validate(value)
        except (UnicodeDecodeError, json.JSONDecodeError, ValidationError, TypeError):
            raise SignatureError(
                'signature file is not JSON of the form {"algorithm": "ed25519", '
                '"key_id": "<16 hex>", "signature": "<base64>"}'
            ) from None
        if parsed.algorithm != "ed25519":
            raise SignatureError(
                f"unsupported signature algorithm {parsed.algorithm[:40]!r}: expected ed25519"
            )
        if not _KEY_ID_PATTERN.fullmatch(parsed.key_id):
            raise SignatureError("signature key_id must be 16 lower-case hex digits")
        parsed.raw_signature()
        return parsed

    def raw_signature(self) -> bytes:
        """The 64 signature bytes.

        Raises:
            SignatureError: if the field is not base64 of exactly 64 bytes.
        """
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature is not valid base64") from None
        if len(raw) != 64:
            raise SignatureError(f"signature decodes to {len(raw)} bytes: expected 64 (Ed25519)")
        return raw


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """Key id: the first 16 hex digits of SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """Sign the exact ``manifest_bytes`` with ``private_key``."""
    raw = private_key.sign(manifest_bytes)
    return Signature(
        key_id=key_id_for(private_key.public_key()),
        signature=base64.b64encode(raw).decode("ascii"),
    )


def verify_manifest(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    keyring: Mapping[str, Ed25519PublicKey],
) -> Manifest:
    """Verify the signature over ``manifest_bytes``, then parse them.

    Args:
        manifest_bytes: the exact bytes of ``manifest.json`` as received.
        signature_bytes: the bytes of ``manifest.sig``.
        keyring: trusted public keys by key id; empty means nothing is trusted.

    Returns:
        The parsed manifest.

    Raises:
        SignatureError: the keyring is empty (fail closed), the signature file is
            malformed, its key is not trusted, or the signature does not verify.
        ManifestError: the signed bytes are not a valid manifest.
    """
    if not keyring:
        raise SignatureError("no trusted keys configured: refusing every package (fail closed)")
    signature = Signature.from_bytes(signature_bytes)
    public_key = keyring.get(signature.key_id)
    if public_key is None:
        raise SignatureError(
            f"package signed by key {signature.key_id}, which is not in the keyring"
        )
    try:
        public_key.verify(signature.raw_signature(), manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {signature.key_id} does not match the manifest bytes"
        ) from None
    return Manifest.from_bytes(manifest_bytes)
