"""A malicious device against the server, on SQLite and on PostgreSQL (issue 11).

Every field a device sends is hostile: a lone surrogate, a NUL, JSON nested
256 deep or with thousands of keys, huge text, control and bidi characters in
a name, a time zone that only happens to be a file. Each is refused with 422
naming the field, on every route a device (or an enrollment token) reaches,
and the fleet goes on: other devices' heartbeats are stored, device lists
answer. A bad row that gets past the API anyway (forced into the batch
below it) is dropped alone. Rows stored by older versions, before these
rules, are listed cleaned and repaired by the device's next heartbeat.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from javia_core.models import DeviceStatus
from javia_updates.backends.base import HeartbeatWrite
from javia_updates.server import create_app
from javia_updates.settings import ServerSettings
from shared_helpers import Clock, bearer

API_KEY = "hostile-devices-admin-key-0123456789"
ADMIN = {"X-API-Key": API_KEY}
START = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
JSON = {"Content-Type": "application/json"}


def _deep_list(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


#: (what, raw JSON body of a heartbeat, the field the 422 must name)
HOSTILE_HEARTBEATS: list[tuple[str, bytes, str]] = [
    ("lone surrogate value", b'{"metadata": {"os": "\\ud800"}}', "metadata"),
    ("lone surrogate key", b'{"metadata": {"\\udfff": 1}}', "metadata"),
    ("low surrogate nested", b'{"metadata": {"a": [{"b": "x\\udc00y"}]}}', "metadata"),
    ("NUL in a value", b'{"metadata": {"os": "a\\u0000b"}}', "metadata"),
    ("NUL in a key", b'{"metadata": {"a\\u0000": true}}', "metadata"),
    ("lists 256 deep", json.dumps({"metadata": {"x": _deep_list(256)}}).encode(), "metadata"),
    (
        "lists 100,000 deep",
        b'{"metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        "nested",
    ),
    ("a 5,000-digit integer", b'{"metadata": {"n": ' + b"7" * 5000 + b"}}", "body"),
    ("invalid UTF-8", b'{"metadata": {"os": "\xff\xfe"}}', "UTF-8"),
    (
        "5,000 keys",
        json.dumps({"metadata": {f"k{i}": i for i in range(5000)}}).encode(),
        "metadata",
    ),
    ("a 100 KB string", json.dumps({"metadata": {"log": "x" * 100_000}}).encode(), "metadata"),
    ("a 1 KB key", json.dumps({"metadata": {"k" * 1000: 1}}).encode(), "metadata"),
    ("a 400-digit integer", b'{"metadata": {"n": ' + b"9" * 400 + b"}}", "metadata"),
    ("NaN", b'{"metadata": {"n": NaN}}', ""),
    ("NUL in the version", b'{"current_version": "v1.0.0\\u0000"}', "current_version"),
    ("surrogate in the version", b'{"current_version": "v1.0.\\ud801"}', "current_version"),
    ("unknown status", b'{"status": "\\ud800"}', "status"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def server_settings(request: pytest.FixtureRequest, tmp_path: Path) -> ServerSettings:
    """Server settings on a fresh SQLite file, or a fresh PostgreSQL database."""
    database_url = None
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        database_url = str(cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}"))
    return ServerSettings(api_key=API_KEY, data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def api(server_settings: ServerSettings, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(server_settings, clock=clock)) as client:
        yield client


def _register(api: TestClient, name: str, **fields: Any) -> tuple[str, dict[str, str]]:
    response = api.post(
        "/api/v1/devices/register", json={"device_name": name, **fields}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["device_uuid"], bearer(body["device_token"])


def _heartbeat(api: TestClient, device: tuple[str, dict[str, str]], body: bytes):  # type: ignore[no-untyped-def]
    uid, headers = device
    return api.post(f"/api/v1/devices/{uid}/heartbeat", content=body, headers={**headers, **JSON})


def _listed(api: TestClient) -> dict[str, dict[str, Any]]:
    response = api.get("/api/v1/devices/", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {item["device_uuid"]: item for item in response.json()["items"]}


def test_hostile_heartbeats_get_422_naming_the_field_and_the_fleet_goes_on(api, clock):
    hostile = _register(api, "hostile")
    honest = _register(api, "honest")
    for what, body, field in HOSTILE_HEARTBEATS:
        response = _heartbeat(api, hostile, body)
        assert response.status_code == 422, (what, response.status_code, response.text)
        assert field in response.json()["detail"], (what, response.json())

        clock.advance(seconds=60)  # the rate limit refills
        ok = _heartbeat(api, honest, b'{"current_version": "v1.0.0", "metadata": {"n": 1}}')
        assert ok.status_code == 200, (what, ok.text)
        listed = _listed(api)  # flushes the batched heartbeats first
        assert listed[honest[0]]["last_seen"] is not None, what
        assert listed[hostile[0]]["last_seen"] is None, what  # nothing of it was stored
    assert api.get(f"/api/v1/devices/{hostile[0]}", headers=ADMIN).status_code == 200


def test_an_accepted_heartbeat_merges_within_the_bounds(api):
    device = _register(api, "merging", metadata={f"a{i}": i for i in range(1000)})
    more = json.dumps({"metadata": {f"b{i}": i for i in range(100)}}).encode()
    response = _heartbeat(api, device, more)
    assert response.status_code == 422
    assert "metadata" in response.json()["detail"] and "1024" in response.json()["detail"]
    assert _heartbeat(api, device, b'{"metadata": {"a1": "x"}}').status_code == 200
    assert _listed(api)[device[0]]["metadata"]["a1"] == "x"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"device_name": "kitchen\u202egnp.exe"}, "device_name"),  # right-to-left override
        ({"device_name": "a\u2066b"}, "device_name"),  # isolate
        ({"device_name": "a\u200fb"}, "device_name"),  # right-to-left mark
        ({"device_name": "a\nfake row"}, "device_name"),
        ({"device_name": "a\tb"}, "device_name"),
        ({"device_name": "\x1b]0;pwned\x07"}, "device_name"),  # OSC: retitle the terminal
        ({"device_name": "a\x7fb"}, "device_name"),  # DEL
        ({"device_name": "a\x9bb"}, "device_name"),  # C1 CSI
        ({"device_name": "a\u2028b"}, "device_name"),
        ({"device_name": "x" * 201}, "device_name"),
        ({"metadata": {"a": "\x00"}}, "metadata"),
        ({"metadata": {"x": _deep_list(256)}}, "metadata"),
        ({"metadata": {f"k{i}": 0 for i in range(2000)}}, "metadata"),
        ({"timezone": "localtime"}, "timezone"),
        ({"timezone": "posixrules"}, "timezone"),
        ({"timezone": "Factory"}, "timezone"),
        ({"timezone": "right/UTC"}, "timezone"),
        ({"timezone": "posix/Europe/Berlin"}, "timezone"),
        ({"timezone": "Europe/../Europe/Berlin"}, "timezone"),
        ({"timezone": "/etc/localtime"}, "timezone"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ],
    ids=lambda value: ascii(value)[:40],
)
def test_hostile_registrations_get_422_naming_the_field(api, fields, field):
    response = api.post("/api/v1/devices/register", json=fields, headers=ADMIN)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail
    if field == "timezone":
        assert "Europe/Berlin" in detail  # the example of the expected form
    assert _listed(api) == {}


def test_a_raw_lone_surrogate_in_a_registration_is_refused(api):
    response = api.post(
        "/api/v1/devices/register",
        content=b'{"device_name": "ok", "metadata": {"a": "\\ud800"}}',
        headers={**ADMIN, **JSON},
    )
    assert response.status_code == 422 and "metadata" in response.json()["detail"]
    response = api.post(
        "/api/v1/devices/register",
        content=b'{"device_name": "x\\ud800"}',
        headers={**ADMIN, **JSON},
    )
    assert response.status_code == 422 and "device_name" in response.json()["detail"]


def test_enrollment_registration_applies_the_same_rules(api):
    created = api.post("/api/v1/enrollment-tokens/", json={"max_uses": 5}, headers=ADMIN)
    enroll = bearer(created.json()["token"])
    for body in (
        b'{"metadata": {"a": "\\ud800"}}',
        b'{"device_name": "\\u202eevil"}',
        b'{"timezone": "posixrules"}',
    ):
        response = api.post("/api/v1/devices/register", content=body, headers={**enroll, **JSON})
        assert response.status_code == 422, (body, response.text)
    tokens = api.get("/api/v1/enrollment-tokens/", headers=ADMIN).json()["items"]
    assert tokens[0]["uses"] == 0  # a refused registration uses nothing up


@pytest.mark.parametrize(
    "timezone",
    ["Europe/Berlin", "UTC", "Etc/UTC", "America/Argentina/Salta", "US/Eastern", "Etc/GMT+5"],
)
def test_iana_names_and_their_links_register(api, timezone):
    response = api.post("/api/v1/devices/register", json={"timezone": timezone}, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["timezone"] == timezone


def test_hostile_status_reports_get_422_naming_the_field(api, publish_update):
    device = _register(api, "reporter")
    assert _heartbeat(api, device, b'{"current_version": "v1.0.0"}').status_code == 200
    update_id = publish_update(api)
    uid, headers = device
    url = f"/api/v1/devices/{uid}/updates/{update_id}/status"
    for body in (
        b'{"status": "failed", "error_message": "boom\\u0000"}',
        b'{"status": "failed", "error_message": "boom \\ud83d"}',
        json.dumps({"status": "failed", "error_message": "x" * 4001}).encode(),
    ):
        response = api.post(url, content=body, headers={**headers, **JSON})
        assert response.status_code == 422, response.text
        assert "error_message" in response.json()["detail"]
    ok = api.post(
        url,
        json={"status": "failed", "error_message": "line 1\n\tline 2 \x1b[31mred"},
        headers=headers,
    )
    assert ok.status_code == 200, ok.text
    history = api.get(f"/api/v1/devices/{uid}/updates", headers=ADMIN).json()["items"]
    assert history[0]["status"] == "failed"


@pytest.fixture
def publish_update(make_package):  # type: ignore[no-untyped-def]
    """publish_update(api) -> update id of an instant v1.1.0 for every device."""

    def publish(api: TestClient) -> int:
        package = make_package("v1.1.0", "instant")
        response = api.post("/api/v1/updates/", files=package.files(), headers=ADMIN)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    return publish


# --------------------------------------------------------------------------- below the API


def test_a_bad_row_forced_into_the_batch_loses_no_other_devices_heartbeat(api, clock, caplog):
    """The API refuses these values; forced into the soft-state batch anyway, only that row is lost."""
    service = api.app.state.service
    good = [_register(api, f"good-{i}") for i in range(3)]
    bad = _register(api, "bad")
    devices = {uid: service.find_device(uuid.UUID(uid)) for uid, _ in [*good, bad]}
    now = clock.now
    for uid, _ in good:
        service.soft_state.record(
            HeartbeatWrite(devices[uid].id, now, "v1.0.0", DeviceStatus.ONLINE, {"ok": uid})
        )
    service.soft_state.record(
        HeartbeatWrite(
            devices[bad[0]].id,
            now,
            "v1.0.0\ud800",  # no database can store this text
            DeviceStatus.ONLINE,
            {"os": "\ud800", "nul": "\x00"},  # PostgreSQL's jsonb refuses both
        )
    )
    with caplog.at_level(logging.WARNING):
        service.flush_soft_state()
    assert service.soft_state.pending() == 0  # not queued again, not retried forever
    assert f"device id {devices[bad[0]].id}" in caplog.text

    listed = _listed(api)
    for uid, _ in good:
        assert listed[uid]["last_seen"] is not None
        assert listed[uid]["metadata"] == {"ok": uid}
    assert listed[bad[0]]["last_seen"] is None
    # and the server goes on recording heartbeats
    clock.advance(seconds=1)
    assert _heartbeat(api, good[0], b'{"metadata": {"ok": "again"}}').status_code == 200
    assert _listed(api)[good[0][0]]["metadata"] == {"ok": "again"}


def _store_raw_metadata(api: TestClient, uid: str, raw_json: str) -> None:
    """Write a metadata value as an older version could have stored it (no API in between)."""
    store = api.app.state.service.store
    table = f"{store.schema}.devices" if store.schema else "devices"
    cast = "CAST(:m AS jsonb)" if store.engine.dialect.name == "postgresql" else ":m"
    with store.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {table} SET metadata = {cast} WHERE device_uuid = :u"),
            {"m": raw_json, "u": uid},
        )
    api.app.state.service.cache.clear()


def test_rows_stored_by_older_versions_are_listed_cleaned_and_repaired_by_a_heartbeat(api, clock):
    device = _register(api, "old")
    other = _register(api, "other")
    deep = json.dumps({"x": _deep_list(256), "keep": "yes"})
    values = [deep]
    if api.app.state.service.store.engine.dialect.name == "sqlite":
        values.append('{"os": "\\ud800", "keep": "yes"}')  # jsonb never held this one
        # deeper than json.loads can read back at all
        values.append('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for raw in values:
        _store_raw_metadata(api, device[0], raw)
        listed = _listed(api)
        assert set(listed) == {device[0], other[0]}, raw[:40]
        shown = listed[device[0]]["metadata"]
        assert isinstance(shown, dict)
        answer = api.get(f"/api/v1/devices/{device[0]}", headers=ADMIN)
        assert answer.status_code == 200, answer.text

        clock.advance(seconds=10)
        beat = _heartbeat(api, device, b'{"metadata": {"fresh": 1}}')
        assert beat.status_code == 200, beat.text
        repaired = _listed(api)[device[0]]["metadata"]
        assert repaired["fresh"] == 1
        assert "\ud800" not in json.dumps(repaired, ensure_ascii=False, default=str)
