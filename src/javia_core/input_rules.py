"""What text, JSON and time zone names a device (or any client) may send (issue 11).

Every field a device sends is hostile until checked here, at the API's one
boundary (the request models of :mod:`javia_core.models`), so that
nothing stored can later fail a batch write, a list or a terminal:

- **Text** (:func:`check_text`): valid Unicode without lone surrogates
  (U+D800 to U+DFFF, which JSON can spell as ``"\\ud800"`` but UTF-8 cannot
  encode) and without NUL (U+0000, which PostgreSQL's ``text`` and ``jsonb``
  refuse).
- **Names** (:func:`check_display_text`): additionally no control character
  (C0 U+0000 to U+001F, DEL U+007F, C1 U+0080 to U+009F), no line or
  paragraph separator (U+2028, U+2029) and no bidirectional formatting
  character (:data:`BIDI_CONTROLS`: the embeddings and overrides U+202A to
  U+202E, the isolates U+2066 to U+2069, and the marks U+200E, U+200F and
  U+061C). They would fake table rows, rewrite what the operator's terminal
  shows, or make a name read differently from what it is
  (CVE-2021-42574, "Trojan Source"). Multi-line text (a description) may
  keep tab and newline.
- **JSON** (:func:`check_json`): objects with text keys, lists, text,
  booleans, null, integers of at most :data:`MAX_JSON_INTEGER_DIGITS` digits and
  finite floats;
  at most :data:`MAX_JSON_DEPTH` levels, :data:`MAX_JSON_KEYS` object keys
  in all, keys of at most :data:`MAX_JSON_KEY_CHARS` characters, and at most
  ``max_bytes`` as compact UTF-8 JSON.
- **Time zones** (:func:`check_timezone`): the IANA names the ``tzdata``
  package lists (its ``zones`` file: every zone and every backward-compatible
  link, such as ``US/Eastern`` and ``UTC``), except ``Factory``. Refused:
  ``localtime``, ``posixrules``, ``Factory``, the ``posix/`` and ``right/``
  trees and anything else that merely happens to be a file under a zoneinfo
  directory.

Rows stored by older versions, before these rules, are made readable by
:func:`sanitize_json` when read (see :mod:`javia_updates.backends.sql.engine`).

Pure functions; importable on a device (standard library only).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "BIDI_CONTROLS",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INTEGER_DIGITS",
    "MAX_JSON_KEYS",
    "MAX_JSON_KEY_CHARS",
    "MAX_METADATA_BYTES",
    "TIMEZONE_EXAMPLE",
    "check_display_text",
    "check_json",
    "check_text",
    "check_timezone",
    "iana_timezones",
    "INVISIBLE_EXTRAS",
    "is_invisible",
    "sanitize_json",
    "sanitize_text",
]

TIMEZONE_EXAMPLE = "Europe/Berlin"

#: Largest device metadata object, in bytes of compact UTF-8 JSON.
MAX_METADATA_BYTES = 64 * 1024
#: Deepest nesting of a device's JSON value; the metadata object itself is level 1.
MAX_JSON_DEPTH = 32
#: Most object keys in one JSON value, counted over every nested object.
MAX_JSON_KEYS = 1024
#: Longest object key, in characters.
MAX_JSON_KEY_CHARS = 256
#: Most decimal digits of an integer (as many as a float's range spans: PostgreSQL's
#: ``jsonb`` gives ``1e300`` back as an integer of 301 digits).
MAX_JSON_INTEGER_DIGITS = 310
# Integers of at most this many bits have at most MAX_JSON_INTEGER_DIGITS digits.
_MAX_INTEGER_BITS = int(MAX_JSON_INTEGER_DIGITS * math.log2(10)) - 1

#: Bidirectional formatting characters refused in names (Unicode UAX #9).
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f"  # ARABIC LETTER MARK, LEFT-TO-RIGHT MARK, RIGHT-TO-LEFT MARK
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings, pop, overrides
    "\u2066\u2067\u2068\u2069"  # isolates
)

#: Code points that show nothing although their Unicode category says otherwise:
#: COMBINING GRAPHEME JOINER and the Hangul fillers.
INVISIBLE_EXTRAS = frozenset("\u034f\u115f\u1160\u3164\uffa0")
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cn"})


def is_invisible(character: str) -> bool:
    """Whether ``character`` shows nothing (or nothing reliable) in a terminal.

    True for format characters (Unicode category Cf: zero-width space and
    joiners, word joiner, soft hyphen, byte order mark, tag characters, the
    bidirectional controls), private use (Co), unassigned code points and
    noncharacters (Cn, e.g. U+FFFE) and :data:`INVISIBLE_EXTRAS`. Such a
    character in a name would make ``kit<U+200B>chen`` look like ``kitchen``.
    """
    return character in INVISIBLE_EXTRAS or unicodedata.category(character) in (
        _INVISIBLE_CATEGORIES
    )


# Lone surrogates and NUL: refused in every text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Additionally refused in a one-line name; tab and newline are in the C0 range.
_NOT_DISPLAYABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "\ud800-\udfff]"
)
# Multi-line text may keep tab and newline.
_NOT_DISPLAYABLE_MULTILINE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "\ud800-\udfff]"
)

_REPLACEMENT = "\ufffd"
_TRUNCATED = "[removed: nested too deep]"


def _describe(character: str) -> str:
    """``U+202E`` plus what it is, for a message."""
    code = ord(character)
    if 0xD800 <= code <= 0xDFFF:
        kind = "the lone surrogate"
    elif code == 0:
        return "the control character U+0000 (NUL)"
    elif character in BIDI_CONTROLS:
        kind = "the bidirectional formatting character"
    elif character in "\u2028\u2029":
        kind = "the line/paragraph separator"
    elif code >= 0x80 and is_invisible(character):
        kind = "the invisible character"
    else:
        kind = "the control character"
    return f"{kind} U+{code:04X}"


def check_text(value: str, field: str) -> str:
    """Return ``value`` if it can be stored and shown: no lone surrogate, no NUL.

    Args:
        value: the text.
        field: its name in the request, for the message (e.g. ``error_message``).

    Raises:
        ValueError: naming ``field``, the character and its position.
    """
    found = _UNSTORABLE.search(value)
    if found is not None:
        raise ValueError(
            f"{field} contains {_describe(found.group())} at character {found.start()}: "
            "expected valid Unicode text without NUL"
        )
    return value


def check_display_text(value: str, field: str, *, multiline: bool = False) -> str:
    """Return ``value`` if it is plain printable text (see the module docstring).

    Args:
        value: the text.
        field: its name in the request, for the message (e.g. ``device_name``).
        multiline: allow tab and newline (a description), else refuse them (a name).

    Raises:
        ValueError: naming ``field`` and the first refused character.
    """
    pattern = _NOT_DISPLAYABLE_MULTILINE if multiline else _NOT_DISPLAYABLE
    found = pattern.search(value)
    position = found.start() if found is not None else None
    if position is None and not value.isascii():
        position = next((i for i, c in enumerate(value) if is_invisible(c)), None)
    if position is not None:
        allowed = "tab and newline allowed" if multiline else "one line"
        raise ValueError(
            f"{field} contains {_describe(value[position])} at character {position}: "
            "expected printable text without control, invisible or bidirectional "
            f"characters ({allowed})"
        )
    return value


def _key_path(path: str, key: str) -> str:
    shown = key if len(key) <= 40 and _NOT_DISPLAYABLE.search(key) is None else None
    if shown is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", shown):
        return f"{path}.{shown}"
    return f"{path}[{ascii(key[:40])}{'...' if len(key) > 40 else ''}]"


#: Any JSON value: :func:`check_json` returns what it was given.
J = TypeVar("J")


def check_json(value: J, field: str, *, max_bytes: int = MAX_METADATA_BYTES) -> J:
    """Return ``value`` if it is JSON a device may send (see the module docstring).

    It runs at every heartbeat, so the common case costs one walk over the
    value (:func:`_quick_ok`), without encoding it. Only a value that fails
    that walk, or whose size may be near ``max_bytes``, is looked at again:
    walked without recursion to name the place and the rule, and encoded to
    measure it exactly.

    Args:
        value: a value as :func:`json.loads` returns it.
        field: its name in the request (e.g. ``metadata``), for the message.
        max_bytes: the largest accepted size of compact UTF-8 JSON, in bytes.

    Raises:
        ValueError: naming the place inside ``field`` (``metadata.a[3]``) and
            the rule it breaks.
    """
    bound = _quick_ok(value)
    if bound is None:
        _explain(value, field)  # raises for every reason _quick_ok refuses
    if bound is None or bound > max_bytes:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise ValueError(f"{field} is {size} bytes as JSON: at most {max_bytes} allowed")
    return value


_unstorable_search = _UNSTORABLE.search


def _quick_ok(value: Any) -> int | None:
    """None if ``value`` breaks a rule of :func:`check_json` other than size, else an
    upper bound of its size as compact UTF-8 JSON (6 bytes per character of text,
    as if every one were escaped)."""
    keys = 0
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth > MAX_JSON_DEPTH:
                return None
            keys += len(item)
            if keys > MAX_JSON_KEYS:
                return None
            size += 2
            for key, child in item.items():
                if type(key) is not str or len(key) > MAX_JSON_KEY_CHARS:
                    return None
                if _unstorable_search(key) is not None:
                    return None
                size += 6 * len(key) + 4
                stack.append((child, depth + 1))
        elif kind is list:
            if depth > MAX_JSON_DEPTH:
                return None
            size += 2 + len(item)
            stack.extend((child, depth + 1) for child in item)
        elif kind is str:
            if _unstorable_search(item) is not None:
                return None
            size += 6 * len(item) + 2
        elif kind is int:
            if item.bit_length() > _MAX_INTEGER_BITS:
                return None
            size += item.bit_length() * 3 // 10 + 2
        elif kind is float:
            if not math.isfinite(item):
                return None
            size += 24
        elif item is None or kind is bool:
            size += 5
        else:
            return None  # subclasses included: _explain decides
    return size


def _explain(value: Any, field: str) -> None:
    """Walk ``value`` naming paths; raise ValueError for the first rule it breaks."""
    keys = 0
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            raise ValueError(
                f"{path} is nested deeper than {MAX_JSON_DEPTH} levels: expected flatter JSON"
            )
        if isinstance(item, dict):
            keys += len(item)
            if keys > MAX_JSON_KEYS:
                raise ValueError(
                    f"{field} has more than {MAX_JSON_KEYS} object keys in all: "
                    "expected a smaller object"
                )
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path} has a key that is not text: expected JSON")
                if len(key) > MAX_JSON_KEY_CHARS:
                    raise ValueError(
                        f"{path} has a key of {len(key)} characters: "
                        f"at most {MAX_JSON_KEY_CHARS} allowed"
                    )
                check_text(key, f"a key of {path}")
                stack.append((child, _key_path(path, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        elif isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if item.bit_length() > _MAX_INTEGER_BITS:
                raise ValueError(
                    f"{path} is an integer of more than {MAX_JSON_INTEGER_DIGITS} digits: "
                    "send it as text"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path} is not a finite number (NaN or Infinity)")
        else:
            raise ValueError(
                f"{path} is a {type(item).__name__}: expected JSON (objects, lists, text, "
                "numbers, true, false, null)"
            )


def sanitize_text(value: str) -> str:
    """``value`` with every lone surrogate and NUL replaced by U+FFFD."""
    if _UNSTORABLE.search(value) is None:
        return value
    return _UNSTORABLE.sub(_REPLACEMENT, value)


def sanitize_json(value: Any, *, max_bytes: int = MAX_METADATA_BYTES) -> Any:
    """A value :func:`check_json` accepts, made from a stored one that it may not.

    For rows written before the rules of :func:`check_json` existed: a value
    that passes is returned as it is (the same object). Otherwise text gets
    U+FFFD for lone surrogates and NUL; anything nested deeper than
    :data:`MAX_JSON_DEPTH` becomes the text ``"[removed: nested too deep]"``;
    keys beyond :data:`MAX_JSON_KEYS` are dropped, too-long keys cut; numbers
    out of range and non-finite floats become null; a value still larger than
    ``max_bytes`` becomes ``{}`` (an object) or null. Never raises.
    """
    try:
        return check_json(value, "value", max_bytes=max_bytes)
    except (ValueError, RecursionError):
        pass
    budget = [MAX_JSON_KEYS]

    def clean(item: Any, depth: int) -> Any:
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            return _TRUNCATED
        if isinstance(item, dict):
            result: dict[str, Any] = {}
            for key, child in item.items():
                if budget[0] <= 0:
                    break
                text = sanitize_text(str(key))[:MAX_JSON_KEY_CHARS]
                if text not in result:
                    budget[0] -= 1
                result[text] = clean(child, depth + 1)
            return result
        if isinstance(item, list):
            return [clean(child, depth + 1) for child in item]
        if isinstance(item, str):
            return sanitize_text(item)
        if isinstance(item, bool) or item is None:
            return item
        if isinstance(item, int):
            return item if item.bit_length() <= _MAX_INTEGER_BITS else None
        if isinstance(item, float):
            return item if math.isfinite(item) else None
        return None

    cleaned = clean(value, 1)
    try:
        return check_json(cleaned, "value", max_bytes=max_bytes)
    except ValueError:
        return {} if isinstance(cleaned, dict) else None


@lru_cache(maxsize=1)
def iana_timezones() -> frozenset[str]:
    """The time zone names :func:`check_timezone` accepts.

    The ``zones`` list of the ``tzdata`` package (a dependency, so the same
    on the server and on a device), without ``Factory``; if that list cannot
    be read, the names :func:`zoneinfo.available_timezones` finds, without
    ``Factory``, ``localtime``, ``posixrules`` and the ``posix/`` and
    ``right/`` trees.
    """
    try:
        from importlib.resources import files

        text = files("tzdata").joinpath("zones").read_text(encoding="utf-8")
        names = {line.strip() for line in text.splitlines() if line.strip()}
    except (ImportError, OSError, ValueError):
        from zoneinfo import available_timezones

        names = set(available_timezones())
    return frozenset(
        name
        for name in names
        if name not in ("Factory", "localtime", "posixrules")
        and not name.startswith(("posix/", "right/"))
    )


def check_timezone(name: object, field: str = "timezone") -> str:
    """Return ``name`` if it is a canonical IANA time zone name (see :func:`iana_timezones`).

    Raises:
        ValueError: naming ``field`` and showing an example (``Europe/Berlin``).
    """
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(
            f"invalid {field}: expected an IANA time zone name such as {TIMEZONE_EXAMPLE}"
        )
    if name not in iana_timezones():
        raise ValueError(
            f"unknown {field} {ascii(name)}: expected an IANA time zone name such as "
            f"{TIMEZONE_EXAMPLE} or UTC"
        )
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{field} {ascii(name)} cannot be loaded: expected an IANA time zone name such as "
            f"{TIMEZONE_EXAMPLE}"
        ) from None
    return name
