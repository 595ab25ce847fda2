"""Whatever device JSON the input rules accept, both databases store and give back (issue 11).

The rule is general, so hypothesis states it: for any JSON value (text from
all of Unicode, NUL and lone surrogates included, numbers of any size,
nesting), either :func:`~javia_core.input_rules.check_json` refuses it,
or SQLite and PostgreSQL store it, through registration and through the
batched heartbeat write, and read back an equal value that the rules accept
again. And :func:`~javia_core.input_rules.sanitize_json` turns anything
at all into a value both store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from javia_core.input_rules import check_json, sanitize_json
from javia_core.models import DeviceStatus
from javia_updates.backends import Backend, create_backend
from javia_updates.backends.base import AuditEntry, HeartbeatWrite, NewDevice

from .conftest import DATABASE_KINDS, settings_for

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
AUDIT = AuditEntry("test", "device.register")

_text = st.text(st.characters(codec=None, categories=None), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text
)
JSON_VALUES = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=25,
)
METADATA = st.dictionaries(_text, JSON_VALUES, max_size=5)


def _accepted(value: Any) -> bool:
    try:
        check_json(value, "metadata")
    except ValueError:
        return False
    return True


@pytest.fixture(params=DATABASE_KINDS)
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    built = create_backend(
        settings_for(
            str(request.param), tmp_path / "data", request=request, monkeypatch=monkeypatch
        )
    )
    built.prepare()
    try:
        yield built
    finally:
        built.close()


def _same(read: Any, sent: Any) -> bool:
    """Equal as JSON values: PostgreSQL's jsonb gives a float such as 2.5e16 back as an integer."""
    if isinstance(sent, float) and isinstance(read, int | float) and not isinstance(read, bool):
        return float(read) == sent
    if isinstance(sent, dict):
        return (
            isinstance(read, dict)
            and read.keys() == sent.keys()
            and all(_same(read[key], sent[key]) for key in sent)
        )
    if isinstance(sent, list):
        return (
            isinstance(read, list)
            and len(read) == len(sent)
            and all(_same(r, s) for r, s in zip(read, sent, strict=True))
        )
    return type(read) is type(sent) and read == sent


def _new_device(metadata: dict[str, Any]) -> NewDevice:
    return NewDevice(uuid.uuid4(), None, "UTC", metadata, uuid.uuid4().hex * 2)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(metadata=METADATA)
def test_accepted_metadata_is_stored_and_read_back_equal(database, metadata):
    store = database.store
    if not _accepted(metadata):
        cleaned = sanitize_json(metadata)
        assert _accepted(cleaned)  # the cleaned form is always storable
        metadata = cleaned
    device = store.create_device(_new_device(metadata), now=NOW, audit=AUDIT)
    assert _same(store.get_device(device.device_uuid).metadata, metadata)

    later = NOW + timedelta(seconds=1)
    other = {"other": 1}
    second = store.create_device(_new_device({}), now=NOW, audit=AUDIT)
    store.record_heartbeats(
        [
            HeartbeatWrite(second.id, later, "v1.0.0", DeviceStatus.ONLINE, other),
            HeartbeatWrite(device.id, later, "v1.0.0", DeviceStatus.ONLINE, metadata),
        ]
    )
    read = store.get_device(device.device_uuid).metadata
    assert _same(read, metadata)
    assert _accepted(read)
    assert store.get_device(second.device_uuid).metadata == other


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES)
def test_sanitize_json_accepts_its_own_output_and_keeps_accepted_values(value):
    cleaned = sanitize_json(value)
    assert _accepted(cleaned)
    if _accepted(value):
        assert cleaned is value
    assert sanitize_json(cleaned) is cleaned
