"""Defects a tester found in a trial run of the server, each pinned by a test."""

from __future__ import annotations

import pytest

from javia_core.versioning import MAX_COMPONENT, Version, VersionError

HUGE = "v99999999999999999999999.0.0"


def assert_detail(response, status: int, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else str(detail)
    for fragment in fragments:
        assert fragment in text, text
    return text


# ------------------------------------------------ 1. version numbers above 2**63 - 1


def test_version_parse_refuses_numbers_a_database_cannot_hold():
    assert Version.parse(f"v{MAX_COMPONENT}.0.0").major == MAX_COMPONENT
    for text in (f"v{MAX_COMPONENT + 1}.0.0", HUGE, "v1." + "9" * 5000 + ".0"):
        with pytest.raises(VersionError, match="has a number above 9223372036854775807"):
            Version.parse(text)
        assert not Version.is_valid(text)


def test_heartbeat_with_a_huge_version_is_422_and_check_keeps_working(client, admin, device):
    url = f"/api/v1/devices/{device['uuid']}/heartbeat"
    assert_detail(
        client.post(url, json={"current_version": HUGE}, headers=device["headers"]),
        422,
        "9223372036854775807",
    )
    shown = client.get(f"/api/v1/devices/{device['uuid']}", headers=admin).json()
    assert shown["current_version"] == "v1.0.0"
    check = client.get(f"/api/v1/devices/{device['uuid']}/updates/check", headers=device["headers"])
    assert check.status_code == 200


def test_plan_and_publish_with_a_huge_version_are_422(client, admin, publish):
    body = {"update_type": "instant", "version": HUGE}
    assert_detail(
        client.post("/api/v1/updates/plan", json=body, headers=admin), 422, "9223372036854775807"
    )
    response, _ = publish(f"v{MAX_COMPONENT + 1}.0.0")
    assert_detail(response, 422, "9223372036854775807")


# ------------------------------------------------ 2. a damaged payload object on disk


def test_download_of_a_truncated_payload_is_refused_before_the_first_byte(
    client, admin, device, publish, service, caplog
):
    response, _ = publish("v1.1.0")
    assert response.status_code == 201, response.text
    update = service.resolve_update("v1.1.0")
    path = service.blobs._path(update.package_url, "payload.tar.gz")  # type: ignore[attr-defined]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    url = "/api/v1/updates/v1.1.0/download"
    with caplog.at_level("ERROR"):
        for headers in (device["headers"], {**device["headers"], "Range": "bytes=1-"}):
            answer = client.get(url, headers=headers)
            assert_detail(
                answer,
                503,
                f"package object for v1.1.0 is damaged: {len(data) // 2} bytes stored, "
                f"{len(data)} expected; republish it",
            )
    assert all(record.exc_info is None for record in caplog.records)
    assert any("damaged" in record.getMessage() for record in caplog.records)


# ------------------------------------------------ 3. versions only go up


def test_publishing_or_planning_a_lower_version_is_409(client, admin, publish):
    response, _ = publish("v3.0.5")
    assert response.status_code == 201, response.text
    lower, _ = publish("v1.0.1")
    assert_detail(
        lower,
        409,
        "v1.0.1 is lower than v3.0.5, already published: publish a higher version "
        "(a rollback is a roll-forward: republish the old content as a new version)",
    )
    plan = client.post(
        "/api/v1/updates/plan", json={"update_type": "instant", "version": "v3.0.4"}, headers=admin
    )
    assert_detail(plan, 409, "v3.0.4 is lower than v3.0.5")
    higher, _ = publish("v3.0.6")
    assert higher.status_code == 201, higher.text
    versions = [u["version"] for u in client.get("/api/v1/updates/", headers=admin).json()["items"]]
    assert "v1.0.1" not in versions


# ------------------------------------------------ 4. `javia server` start-up errors are one line


@pytest.fixture
def run_server_cli(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from javia_cli.main import app as javia_app

    monkeypatch.setenv("JAVIA_API_KEY", "trial-defects-admin-key-0123456789")

    def run(*arguments: str, **environment: str):  # type: ignore[no-untyped-def]
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return CliRunner().invoke(
            javia_app, ["server", "--data-dir", str(tmp_path / "data"), *arguments]
        )

    return run


@pytest.mark.parametrize(
    ("environment", "fragments"),
    [
        ({"JAVIA_WINDOW_START": "25:00"}, ("JAVIA_WINDOW_START", "'25:00'", "HH:MM")),
        (
            {"JAVIA_HEARTBEAT_INTERVAL_SECONDS": "-1"},
            ("JAVIA_HEARTBEAT_INTERVAL_SECONDS", "greater than 0"),
        ),
    ],
)
def test_invalid_settings_are_one_line_and_exit_1(run_server_cli, environment, fragments):
    result = run_server_cli(**environment)
    assert result.exit_code == 1
    output = result.output.strip()
    assert "Traceback" not in output and "ValidationError" not in output
    assert len(output.splitlines()) == 1, output
    for fragment in fragments:
        assert fragment in output


def test_port_out_of_range_is_a_usage_error_not_a_traceback(run_server_cli):
    result = run_server_cli("--port", "99999")
    assert result.exit_code == 2
    assert "65535" in result.output
    assert not isinstance(result.exception, OverflowError)


def test_port_in_use_is_one_line_before_uvicorn_starts():
    import socket

    from javia_updates.server import check_port_free
    from javia_updates.settings import SettingsError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again once closed


# ------------------------------------------------ 8. unknown routes say so


def test_unknown_routes_name_the_method_and_path_and_point_to_the_docs(client, admin):
    for method, path in (
        ("GET", "/api/v1/devices//updates/check"),
        ("GET", "/api/v1/nothing-here"),
        ("POST", "/api/v1/devices/x/y/z"),
    ):
        response = client.request(method, path, headers=admin)
        assert response.json() == {"detail": f"no route {method} {path}: see /docs"}
        assert response.status_code == 404
    missing = client.get(f"/api/v1/devices/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=admin)
    assert missing.status_code == 404 and "no route" not in missing.json()["detail"]


# ------------------------------------------------ 7. control characters in display text


@pytest.mark.parametrize("name", ["kitchen\x00", "\x1b[2Jkitchen", "a\rb"])
def test_device_names_with_control_characters_are_422(client, admin, name):
    response = client.post("/api/v1/devices/register", json={"device_name": name}, headers=admin)
    assert_detail(response, 422, "device_name", "control character")


def test_device_names_may_hold_any_language_but_not_tabs_or_newlines(client, admin):
    # A tab or newline in a name fakes table rows in the operator's terminal (issue 11).
    for name in ("Küche\tvorne", "Küche\nvorne"):
        response = client.post(
            "/api/v1/devices/register", json={"device_name": name}, headers=admin
        )
        assert_detail(response, 422, "device_name", "control character")
    response = client.post(
        "/api/v1/devices/register", json={"device_name": "Küche vorne レ ☕ مطبخ"}, headers=admin
    )
    assert response.status_code == 201, response.text


def test_update_descriptions_with_control_characters_are_422(client, admin, publish):
    response, _ = publish("v1.1.0", description="fix\x1b[31m red")
    assert_detail(response, 422, "description", "U+001B")
    assert client.get("/api/v1/updates/", headers=admin).json()["total"] == 0
    good, _ = publish("v1.1.0", description="line one\n\tline two")
    assert good.status_code == 201, good.text


# ------------------------------------------------ 5. signatures the server cannot check


def test_trusted_keys_dir_makes_publish_refuse_a_foreign_signature(
    tmp_path, backend, clock, make_package
):
    from javia_core.errors import SignatureError
    from javia_updates.keys import generate_keypair
    from javia_updates.service import UpdateService
    from javia_updates.settings import ServerSettings

    keyring = tmp_path / "trusted"
    generate_keypair(tmp_path / "other-publisher")
    keyring.mkdir()
    for pub in (tmp_path / "other-publisher").glob("*.pub"):
        (keyring / pub.name).write_bytes(pub.read_bytes())
    settings = ServerSettings(
        api_key="trial-defects-admin-key-0123456789",
        data_dir=tmp_path / "data",
        trusted_keys_dir=keyring,
    )
    service = UpdateService(backend, settings)
    with pytest.raises(SignatureError):
        service.publish_update(make_package("v1.1.0", "instant").upload(), now=clock())
    assert service.store.list_updates(limit=10, offset=0).total == 0


def test_start_up_warns_once_when_no_trusted_keys_are_configured(tmp_path, caplog):
    from javia_updates.server import warn_if_signatures_unchecked
    from javia_updates.settings import ServerSettings

    with caplog.at_level("WARNING"):
        assert warn_if_signatures_unchecked(ServerSettings(data_dir=tmp_path))
        assert not warn_if_signatures_unchecked(
            ServerSettings(data_dir=tmp_path, trusted_keys_dir=tmp_path)
        )
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "JAVIA_TRUSTED_KEYS_DIR" in lines[0]


# ------------------------------------------------ 6. short admin keys


@pytest.mark.parametrize("key", ["Zq9", "fifteen-chars-x"])
def test_short_admin_keys_are_refused_with_how_to_generate_one(key):
    from javia_updates.settings import ServerSettings, SettingsError

    with pytest.raises(SettingsError) as caught:
        ServerSettings(api_key=key).require_api_key()
    message = str(caught.value)
    assert "at least 16" in message and "JAVIA_API_KEY" in message
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'" in message
    assert key not in message
    assert ServerSettings(api_key="sixteen-chars-xy").require_api_key() == "sixteen-chars-xy"
