"""Every route of the HTTP API through the real ASGI app, including bad input."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from javia_updates.server import create_app
from javia_updates.settings import ServerSettings, SettingsError
from shared_helpers import bearer


def assert_detail(response, status: int, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str)
    for fragment in fragments:
        assert fragment in body["detail"]
    return body["detail"]


# --------------------------------------------------------------------------- start-up, health, docs


def test_health_needs_no_credentials(client, clock):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["server_time"].startswith("2027-01-15T12:00:00")


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/devices/{device_uuid}/heartbeat" in paths
    assert "multipart/form-data" in paths["/api/v1/updates/"]["post"]["requestBody"]["content"]


def test_server_without_api_key_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVIA_API_KEY", raising=False)
    monkeypatch.setenv("JAVIA_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(SettingsError, match="JAVIA_API_KEY"):
        create_app(ServerSettings(data_dir=tmp_path))


# --------------------------------------------------------------------------- auth


def test_admin_routes_need_the_api_key(client, device):
    assert_detail(client.get("/api/v1/devices/"), 401, "X-API-Key")
    assert_detail(
        client.get("/api/v1/devices/", headers={"X-API-Key": "wrong"}), 401, "invalid API key"
    )
    assert_detail(client.get("/api/v1/devices/", headers=device["headers"]), 403, "operators")
    assert_detail(client.get("/api/v1/updates/", headers=device["headers"]), 403)
    assert_detail(client.post("/api/v1/devices/register", json={}, headers=device["headers"]), 403)


def test_device_routes_need_the_devices_own_token(client, admin, device):
    uid = device["uuid"]
    other = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    url = f"/api/v1/devices/{uid}/heartbeat"
    assert_detail(client.post(url, json={}), 401, "Bearer")
    assert_detail(
        client.post(url, json={}, headers=bearer("not-a-token")), 401, "invalid device token"
    )
    assert_detail(
        client.post(url, json={}, headers=bearer(other["device_token"])), 403, "own records"
    )
    assert_detail(client.post(url, json={}, headers=admin), 403, "device itself")
    assert client.post(url, json={}, headers=device["headers"]).status_code == 200


def test_wrong_auth_scheme_is_refused(client, device):
    headers = {"Authorization": f"Basic {device['token']}"}
    assert_detail(
        client.post(f"/api/v1/devices/{device['uuid']}/heartbeat", json={}, headers=headers), 401
    )


def test_tokens_are_stored_only_as_hashes(client, admin, backend, device):
    from sqlalchemy import text

    with backend.store.engine.connect() as connection:
        stored = connection.execute(text("SELECT token_hash FROM devices")).scalars().all()
    assert device["token"] not in stored
    import hashlib

    assert hashlib.sha256(device["token"].encode()).hexdigest() in stored
    assert len(device["token"]) >= 43  # 32 random bytes, base64


# --------------------------------------------------------------------------- devices


def test_register_returns_201_with_a_one_time_token(client, admin):
    wanted = str(uuid.uuid4())
    response = client.post(
        "/api/v1/devices/register",
        json={
            "device_uuid": wanted,
            "device_name": "hall",
            "timezone": "Europe/Berlin",
            "metadata": {"room": "hall"},
        },
        headers=admin,
    )
    assert response.status_code == 201
    body = response.json()
    assert (
        body["device_uuid"] == wanted
        and body["timezone"] == "Europe/Berlin"
        and body["device_token"]
    )
    shown = client.get(f"/api/v1/devices/{wanted}", headers=admin).json()
    assert "device_token" not in shown and "token_hash" not in shown
    assert shown["metadata"] == {"room": "hall"} and shown["status"] == "offline"


def test_registering_a_uuid_twice_is_a_conflict(client, admin):
    body = {"device_uuid": str(uuid.uuid4())}
    assert client.post("/api/v1/devices/register", json=body, headers=admin).status_code == 201
    assert_detail(
        client.post("/api/v1/devices/register", json=body, headers=admin), 409, "already registered"
    )


def test_unknown_timezone_is_422_naming_the_field_and_an_example(client, admin):
    response = client.post(
        "/api/v1/devices/register", json={"timezone": "Mars/Olympus"}, headers=admin
    )
    assert_detail(response, 422, "timezone", "Europe/Berlin")


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"device_uuid": "not-a-uuid"}',
        '{"device_name": 5}',
        '{"metadata": "a string"}',
        '{"unexpected": true}',
        '{"device_name": "' + "x" * 300 + '"}',
    ],
)
def test_garbage_registration_bodies_get_a_readable_422(client, admin, body):
    response = client.post(
        "/api/v1/devices/register",
        content=body,
        headers={**admin, "Content-Type": "application/json"},
    )
    assert_detail(response, 422)


def test_device_list_paginates_and_filters(client, admin, clock):
    uuids = []
    for index in range(5):
        body = client.post(
            "/api/v1/devices/register", json={"device_name": f"d{index}"}, headers=admin
        ).json()
        uuids.append(body["device_uuid"])
        if index < 2:
            client.post(
                f"/api/v1/devices/{body['device_uuid']}/heartbeat",
                json={"current_version": "v1.0.0"},
                headers=bearer(body["device_token"]),
            )
    page = client.get("/api/v1/devices/", params={"limit": 2, "offset": 1}, headers=admin).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert [d["device_uuid"] for d in page["items"]] == uuids[1:3]

    online = client.get("/api/v1/devices/", params={"online": "true"}, headers=admin).json()
    assert {d["device_uuid"] for d in online["items"]} == set(uuids[:2])
    offline = client.get("/api/v1/devices/", params={"status": "offline"}, headers=admin).json()
    assert offline["total"] == 3
    versioned = client.get("/api/v1/devices/", params={"version": "v1.0.0"}, headers=admin).json()
    assert versioned["total"] == 2
    clock.advance(seconds=3 * 300 + 1)
    assert (
        client.get("/api/v1/devices/", params={"online": "true"}, headers=admin).json()["total"]
        == 0
    )


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"limit": "ten"},
        {"offset": 10**30},
        {"status": "sleeping"},
    ],
)
def test_bad_list_parameters_are_422(client, admin, params):
    assert_detail(client.get("/api/v1/devices/", params=params, headers=admin), 422)


def test_version_filter_must_be_a_version(client, admin):
    assert_detail(
        client.get("/api/v1/devices/", params={"version": "1.0"}, headers=admin), 422, "vX.Y.Z"
    )


def test_device_paths_validate_the_uuid(client, admin):
    assert_detail(client.get("/api/v1/devices/not-a-uuid", headers=admin), 422, "device_uuid")
    assert_detail(
        client.get(f"/api/v1/devices/{uuid.uuid4()}", headers=admin), 404, "not registered"
    )


# --------------------------------------------------------------------------- heartbeat, check, status


def test_heartbeat_answers_server_time_interval_and_directive(client, device, publish, clock):
    response, _ = publish("v1.1.0", "instant")
    assert response.status_code == 201
    clock.advance(seconds=20)

    body = client.post(
        f"/api/v1/devices/{device['uuid']}/heartbeat",
        json={"current_version": "v1.0.0"},
        headers=device["headers"],
    ).json()

    assert body["server_time"].startswith("2027-01-15T12:00:20")
    assert body["heartbeat_interval_seconds"] == 300
    update = body["update"]
    update_id = response.json()["id"]
    assert update["version"] == "v1.1.0" and update["update_type"] == "instant"
    assert update["manifest_url"] == f"/api/v1/updates/{update_id}/manifest"
    assert update["signature_url"] == f"/api/v1/updates/{update_id}/signature"
    assert update["download_url"] == f"/api/v1/updates/{update_id}/download"
    assert update["size"] == response.json()["size"]


def test_heartbeat_body_may_be_omitted(client, device):
    response = client.post(f"/api/v1/devices/{device['uuid']}/heartbeat", headers=device["headers"])
    assert response.status_code == 200 and response.json()["update"] is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{", "not valid JSON"),
        ('{"current_version": 5}', "current_version"),
        ('{"current_version": "1.2.3"}', "vX.Y.Z"),
        ('{"status": "asleep"}', "status"),
        ('{"metadata": [1]}', "metadata"),
    ],
)
def test_bad_heartbeats_are_422(client, device, body, fragment):
    response = client.post(
        f"/api/v1/devices/{device['uuid']}/heartbeat",
        content=body,
        headers={**device["headers"], "Content-Type": "application/json"},
    )
    assert_detail(response, 422, fragment)


def test_heartbeat_with_huge_numbers_or_oversized_metadata_never_500s(client, device):
    url = f"/api/v1/devices/{device['uuid']}/heartbeat"
    big = client.post(url, json={"metadata": {"counter": 10**40}}, headers=device["headers"])
    assert big.status_code == 200
    assert_detail(
        client.post(url, json={"metadata": {"x": "y" * 70_000}}, headers=device["headers"]),
        422,
        "65536",
    )
    nan = client.post(
        url,
        content='{"metadata": {"load": NaN}}',
        headers={**device["headers"], "Content-Type": "application/json"},
    )
    assert 400 <= nan.status_code < 500


def test_check_is_open_to_the_device_and_the_operator(client, admin, device, publish):
    publish("v1.1.0", "instant")
    url = f"/api/v1/devices/{device['uuid']}/updates/check"
    for headers in (device["headers"], admin):
        body = client.get(url, headers=headers).json()
        assert body["update_available"] is True and body["update"]["version"] == "v1.1.0"
        assert body["current_version"] == "v1.0.0"
    other = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    assert_detail(client.get(url, headers=bearer(other["device_token"])), 403)


def test_status_reports_move_forward_and_repeat_idempotently(client, device, publish):
    response, _ = publish("v1.1.0", "instant")
    update_id = response.json()["id"]
    url = f"/api/v1/devices/{device['uuid']}/updates/{update_id}/status"

    first = client.post(url, json={"status": "downloading"}, headers=device["headers"]).json()
    again = client.post(url, json={"status": "downloading"}, headers=device["headers"]).json()
    done = client.post(url, json={"status": "completed"}, headers=device["headers"]).json()
    late = client.post(url, json={"status": "downloading"}, headers=device["headers"])

    assert (first["changed"], again["changed"], done["changed"]) == (True, False, True)
    assert late.status_code == 200 and late.json() == {
        "update_id": update_id,
        "device_uuid": device["uuid"],
        "status": "completed",
        "changed": False,
    }


@pytest.mark.parametrize(
    ("path_id", "body", "status"),
    [
        ("1", {"status": "pending"}, 422),  # devices may not report pending
        ("1", {"status": "superseded"}, 422),
        ("1", {"status": "done"}, 422),
        ("1", {}, 422),
        ("99999999999999999999999", {"status": "downloading"}, 422),
        ("-1", {"status": "downloading"}, 422),
        ("abc", {"status": "downloading"}, 422),
        ("77", {"status": "downloading"}, 404),
    ],
)
def test_bad_status_reports(client, device, publish, path_id, body, status):
    publish("v1.1.0", "instant")
    url = f"/api/v1/devices/{device['uuid']}/updates/{path_id}/status"
    assert_detail(client.post(url, json=body, headers=device["headers"]), status)


def test_device_history_is_the_devices_own(client, admin, device, publish):
    publish("v1.1.0", "instant")
    url = f"/api/v1/devices/{device['uuid']}/updates"
    mine = client.get(url, headers=device["headers"]).json()
    assert [row["version"] for row in mine["items"]] == ["v1.1.0"]
    assert client.get(url, headers=admin).json() == mine
    other = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    assert_detail(client.get(url, headers=bearer(other["device_token"])), 403)


# --------------------------------------------------------------------------- publish


def test_publish_returns_201_with_counts(client, device, publish):
    response, package = publish("v1.1.0", "instant")
    assert response.status_code == 201
    body = response.json()
    assert body["version"] == "v1.1.0" and body["update_type"] == "instant"
    assert body["status_counts"] == {"pending": 1}
    assert body["size"] == len(package.payload)
    assert body["package_url"] == f"/api/v1/updates/{body['id']}/download"


@pytest.mark.parametrize("bad", ["1.2.3", "v1.2", "v01.2.3"])
def test_publish_with_a_bad_version_is_422_showing_the_form(publish, bad, settings):
    response, _ = publish(bad, "scheduled")
    assert_detail(response, 422, "vX.Y.Z", bad)
    assert list((settings.data_dir / "uploads").iterdir()) == []  # the upload was cleaned up


def test_publishing_an_existing_version_is_409(publish):
    first, _ = publish("v1.2.3")
    second, _ = publish("v1.2.3")
    assert_detail(
        second,
        409,
        f"version v1.2.3 is already published (update {first.json()['id']}); publish a higher version",
    )


def test_payload_not_matching_the_manifest_is_400_with_expected_and_actual(publish, settings):
    response, _ = publish("v1.1.0", payload_override=b"tampered payload")
    detail = assert_detail(response, 400, "size is 16 bytes, the manifest says", "sha256 is")
    assert "payload.tar.gz" in detail
    assert not any((settings.data_dir / "packages").rglob("*.tar.gz"))
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_requested_type_differing_from_the_signed_one_is_400(publish):
    response, _ = publish("v1.1.0", "scheduled", data={"update_type": "instant"})
    assert_detail(response, 400, "signed manifest says scheduled")


def test_requested_type_equal_to_the_signed_one_is_accepted(publish):
    response, _ = publish("v1.1.0", "urgent", data={"update_type": "urgent"})
    assert response.status_code == 201


def test_unknown_update_type_field_is_422(publish):
    response, _ = publish("v1.1.0", "urgent", data={"update_type": "whenever"})
    assert_detail(response, 422, "scheduled, urgent, instant")


def test_targets_field_selects_devices(client, admin, device, publish):
    other = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    response, _ = publish("v1.1.0", "scheduled", data={"targets": f" {other['device_uuid']} ,"})
    assert response.status_code == 201
    assert response.json()["targets"] == [other["device_uuid"]]
    assert response.json()["status_counts"] == {"pending": 1}


@pytest.mark.parametrize(
    ("targets", "status", "fragment"),
    [
        ("not-a-uuid", 422, "not a device uuid"),
        (" , ", 422, "targets is empty"),
        (str(uuid.UUID(int=7)), 404, "not registered"),
    ],
)
def test_bad_targets_are_refused(publish, targets, status, fragment):
    response, _ = publish("v1.1.0", "scheduled", data={"targets": targets})
    assert_detail(response, status, fragment)


def test_malformed_signature_is_400(client, admin, make_package):
    package = make_package("v1.1.0")
    files = package.files()
    files["signature"] = ("manifest.sig", b"garbage", "application/json")
    assert_detail(client.post("/api/v1/updates/", files=files, headers=admin), 400, "signature")


def test_malformed_manifest_is_422(client, admin, make_package):
    files = make_package("v1.1.0").files()
    files["manifest"] = ("manifest.json", b"\xff\xfe not json", "application/json")
    assert_detail(client.post("/api/v1/updates/", files=files, headers=admin), 422, "manifest")


@pytest.mark.parametrize("missing", ["manifest", "signature", "payload"])
def test_missing_multipart_part_is_422(client, admin, make_package, missing, settings):
    files = make_package("v1.1.0").files()
    del files[missing]
    assert_detail(
        client.post("/api/v1/updates/", files=files, headers=admin),
        422,
        f"missing form part {missing}",
    )
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_publish_refuses_non_multipart_and_unknown_parts(client, admin, make_package):
    assert_detail(
        client.post("/api/v1/updates/", json={"version": "v1.0.0"}, headers=admin),
        422,
        "multipart/form-data",
    )
    assert_detail(
        client.post(
            "/api/v1/updates/",
            content=b"--x\r\nno headers here",
            headers={**admin, "Content-Type": "multipart/form-data; boundary=x"},
        ),
        422,
    )
    files = make_package("v1.1.0").files()
    files["extra"] = ("x", b"y", "text/plain")
    assert_detail(
        client.post("/api/v1/updates/", files=files, headers=admin),
        422,
        "unexpected form part 'extra'",
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_above_the_limit_is_413_naming_the_limit(
    tmp_path, clock, admin, make_package, chunked
):
    import os

    import httpx

    small = ServerSettings(
        api_key=admin["X-API-Key"], data_dir=tmp_path / "small", max_upload_bytes=2048
    )
    package = make_package("v1.1.0", files={"noise.bin": os.urandom(4096)})
    request = httpx.Request("POST", "http://server/api/v1/updates/", files=package.files())
    body = request.read()
    headers = {**admin, "Content-Type": request.headers["Content-Type"]}
    with TestClient(create_app(small, clock=clock)) as client:
        if chunked:  # no Content-Length: the limit is enforced while streaming
            response = client.post(
                "/api/v1/updates/",
                content=iter([body[i : i + 512] for i in range(0, len(body), 512)]),
                headers=headers,
            )
        else:
            response = client.post("/api/v1/updates/", content=body, headers=headers)
    assert_detail(response, 413, "2048 bytes")
    assert list((tmp_path / "small" / "uploads").iterdir()) == []


# --------------------------------------------------------------------------- updates: reading


def test_updates_list_get_by_id_and_version_and_devices(client, admin, device, publish):
    publish("v1.9.0", "scheduled")
    second, _ = publish("v1.10.0", "scheduled")
    listing = client.get("/api/v1/updates/", headers=admin).json()
    assert [u["version"] for u in listing["items"]] == ["v1.10.0", "v1.9.0"] and listing[
        "total"
    ] == 2
    assert (
        client.get("/api/v1/updates/", params={"update_type": "instant"}, headers=admin).json()[
            "total"
        ]
        == 0
    )

    by_id = client.get(f"/api/v1/updates/{second.json()['id']}", headers=admin).json()
    by_version = client.get("/api/v1/updates/v1.10.0", headers=admin).json()
    assert by_id == by_version and by_id["status_counts"] == {"pending": 1}

    rows = client.get("/api/v1/updates/v1.10.0/devices", headers=admin).json()
    assert [(r["device_uuid"], r["status"]) for r in rows["items"]] == [(device["uuid"], "pending")]
    assert (
        client.get(
            "/api/v1/updates/v1.10.0/devices", params={"status": "failed"}, headers=admin
        ).json()["total"]
        == 0
    )


@pytest.mark.parametrize(
    ("reference", "status", "fragment"),
    [
        ("latest", 422, "v1.2.3"),
        ("v1.2", 422, "vX.Y.Z"),
        ("99999999999999999999999", 422, "update id"),
        ("9223372036854775808", 404, "does not exist"),
        ("42", 404, "does not exist"),
        ("v9.9.9", 404, "v9.9.9"),
    ],
)
def test_bad_update_references(client, admin, reference, status, fragment):
    for suffix in ("", "/devices", "/plan", "/manifest", "/signature", "/download"):
        assert_detail(
            client.get(f"/api/v1/updates/{reference}{suffix}", headers=admin), status, fragment
        )


def test_plan_dry_run_and_published_plan(client, admin, device, publish):
    body = {"update_type": "instant", "version": "v1.1.0"}
    dry = client.post("/api/v1/updates/plan", json=body, headers=admin).json()["items"]
    assert [(e["device_uuid"], e["gets_row"]) for e in dry] == [(device["uuid"], True)]

    response, _ = publish("v1.1.0", "instant")
    published = client.get(f"/api/v1/updates/{response.json()['id']}/plan", headers=admin).json()[
        "items"
    ]
    assert published[0]["status"] == "pending" and published[0]["gets_row"] is True


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"update_type": "instant", "version": "1.1.0"}, 422, "vX.Y.Z"),
        ({"update_type": "sometime", "version": "v1.1.0"}, 422, "update_type"),
        ({"update_type": "instant", "version": "v1.1.0", "targets": ["nope"]}, 422, "targets"),
        (
            {"update_type": "instant", "version": "v1.1.0", "targets": [str(uuid.UUID(int=1))]},
            404,
            "not registered",
        ),
        ({"version": "v1.1.0"}, 422, "update_type"),
    ],
)
def test_bad_plan_requests(client, admin, body, status, fragment):
    assert_detail(client.post("/api/v1/updates/plan", json=body, headers=admin), status, fragment)


def test_manifest_and_signature_are_the_exact_bytes(client, admin, device, publish):
    response, package = publish("v1.1.0", "instant")
    update_id = response.json()["id"]
    for headers in (admin, device["headers"]):
        assert (
            client.get(f"/api/v1/updates/{update_id}/manifest", headers=headers).content
            == package.manifest
        )
        assert (
            client.get(f"/api/v1/updates/{update_id}/signature", headers=headers).content
            == package.signature
        )


def test_a_device_without_a_row_cannot_fetch_the_package(client, admin, publish):
    response, _ = publish("v1.1.0", "instant")  # no device online: no rows
    stranger = client.post("/api/v1/devices/register", json={}, headers=admin).json()
    update_id = response.json()["id"]
    for suffix in ("manifest", "signature", "download"):
        assert_detail(
            client.get(
                f"/api/v1/updates/{update_id}/{suffix}", headers=bearer(stranger["device_token"])
            ),
            403,
            "not assigned",
        )


def test_audit_log_records_register_publish_and_status(client, admin, device, publish):
    response, _ = publish("v1.1.0", "instant")
    client.post(
        f"/api/v1/devices/{device['uuid']}/updates/{response.json()['id']}/status",
        json={"status": "downloading"},
        headers=device["headers"],
    )
    actions = [
        line["action"] for line in client.get("/api/v1/audit", headers=admin).json()["items"]
    ]
    assert actions[:3] == ["device_update.status", "update.publish", "device.register"]
    assert_detail(client.get("/api/v1/audit", headers=device["headers"]), 403)


def test_unknown_routes_answer_with_a_detail(client):
    assert_detail(client.get("/api/v1/nothing-here"), 404)
    assert_detail(client.delete("/api/v1/health"), 405)


def test_offline_derivation_over_http(client, admin, device, clock):
    url = f"/api/v1/devices/{device['uuid']}"
    clock.advance(seconds=900)
    assert client.get(url, headers=admin).json()["status"] == "online"
    clock.advance(seconds=1)
    assert client.get(url, headers=admin).json()["status"] == "offline"  # 3 × 300 s + 1 s
