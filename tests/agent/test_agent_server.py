"""The agent against the real javia server over loopback (DESIGN.md sections 6 and 7).

The lead's end-to-end tests drive whole processes; this one stays in-process
to check the contract between :class:`DeviceClient`/:class:`Agent` and
``javia_updates.server``: registration, heartbeat directives, downloads with
``Range``, and status reports that reach ``completed``.
"""

from __future__ import annotations

import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from javia_agent.agent import Agent, build_service
from javia_agent.cli import app as agent_cli
from javia_agent.client import DeviceClient
from javia_agent.config import load_config
from javia_agent.installer import InstallResult

from .helpers import PackageFactory, Signer

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


class LiveServer:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key


@pytest.fixture
def live_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    from javia_updates.server.app import create_app
    from javia_updates.settings import ServerSettings

    monkeypatch.setenv("JAVIA_CONFIG", str(tmp_path / "no-server-config.toml"))
    api_key = secrets.token_urlsafe(24)
    settings = ServerSettings(
        api_key=api_key, data_dir=tmp_path / "server-data", heartbeat_interval_seconds=5
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", api_key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_agent_registers_installs_an_instant_update_and_reports_completed(
    tmp_path: Path, live_server: LiveServer, signer: Signer, make_package: PackageFactory
) -> None:
    from javia_updates.admin_client import AdminClient

    config_path = tmp_path / "etc" / "agent.toml"
    registered = CliRunner().invoke(
        agent_cli,
        [
            "register",
            "--server",
            live_server.url,
            "--api-key",
            live_server.api_key,
            "--name",
            "pi-kitchen",
            "--timezone",
            "Europe/Berlin",
            "--config",
            str(config_path),
            "--token-file",
            str(tmp_path / "etc" / "token"),
            "--install-root",
            str(tmp_path / "opt" / "app"),
            "--state-dir",
            str(tmp_path / "var"),
            "--keyring",
            str(signer.keyring_dir),
            "--service-mode",
            "command",
            "--start-command",
            f'["{sys.executable}", "app.py"]',
            "--app-env",
            f'{{"TEST_APP_STATUS": "{tmp_path / "status.json"}"}}',
            "--health-seconds",
            "0.5",
        ],
    )
    assert registered.exit_code == 0, registered.output
    config = load_config(config_path)
    assert config.device_uuid is not None and config.timezone == "Europe/Berlin"

    installed = CliRunner().invoke(
        agent_cli, ["install", str(make_package("v1.0.0").directory), "--config", str(config_path)]
    )
    assert installed.exit_code == 0, installed.output

    agent = Agent.from_config(config)
    try:
        first = agent.run_once()  # the server learns the device runs v1.0.0
        assert first.response.update is None

        package = make_package("v1.1.0")
        with AdminClient(live_server.url, live_server.api_key) as admin:
            update = admin.publish(
                manifest_path=package.manifest_path,
                signature_path=package.signature_path,
                payload_path=package.payload_path,
                update_type="instant",
            )
            result = agent.run_once()
            assert result.outcome is not None, result.decision
            assert result.outcome.result == InstallResult.COMPLETED, result.outcome
            assert len(agent.outbox) == 0  # every report delivered

            agent.run_once()  # heartbeat with the new version
            rows = admin.update_devices(update.id)
            device = admin.get_device(str(config.device_uuid))

        assert [(str(row.device_uuid), row.status) for row in rows] == [
            (str(config.device_uuid), "completed")
        ]
        assert device.current_version == "v1.1.0"
        assert device.metadata["ip_address"] == "127.0.0.1"
        assert device.metadata["hostname"]
        assert agent.installer.current_release() == "v1.1.0"
    finally:
        build_service(config).stop()
        agent.client.close()


def test_a_device_token_cannot_be_used_for_another_device(live_server: LiveServer) -> None:
    from javia_agent.errors import AuthenticationError, ServerError
    from javia_core.models import DeviceRegisterRequest, HeartbeatRequest

    with DeviceClient(live_server.url) as client:
        first = client.register(live_server.api_key, DeviceRegisterRequest(device_name="a"))
    with DeviceClient(live_server.url) as client:
        second = client.register(live_server.api_key, DeviceRegisterRequest(device_name="b"))
    with (
        DeviceClient(
            live_server.url, device_uuid=second.device_uuid, token=first.device_token
        ) as client,
        pytest.raises(ServerError) as error,
    ):
        client.heartbeat(HeartbeatRequest())
    assert error.value.status_code in (401, 403, 404)
    with DeviceClient(live_server.url) as client, pytest.raises(AuthenticationError):
        client.register("wrong-key", DeviceRegisterRequest())


def test_the_server_resumes_with_an_exact_range_and_takes_repeated_reports_in_stride(
    tmp_path: Path, live_server: LiveServer, signer: Signer, make_package: PackageFactory
) -> None:
    """The server side of the agent's contract: Range → 206, reports idempotent and forward-only."""
    import httpx

    from javia_core.models import DeviceRegisterRequest, HeartbeatRequest, StatusReport
    from javia_core.models import UpdateStatus as Status
    from javia_updates.admin_client import AdminClient

    with DeviceClient(live_server.url) as client:
        registered = client.register(live_server.api_key, DeviceRegisterRequest(device_name="r"))
    package = make_package("v1.1.0")
    with AdminClient(live_server.url, live_server.api_key) as admin:
        admin.publish(
            manifest_path=package.manifest_path,
            signature_path=package.signature_path,
            payload_path=package.payload_path,
            update_type="instant",
        )
    with DeviceClient(
        live_server.url, device_uuid=registered.device_uuid, token=registered.device_token
    ) as client:
        directive = client.heartbeat(HeartbeatRequest()).update
        assert directive is not None
        size = package.payload_path.stat().st_size
        offset = size // 3
        answer = httpx.get(
            live_server.url + directive.download_url,
            headers={
                "Authorization": f"Bearer {registered.device_token}",
                "Range": f"bytes={offset}-",
            },
        )
        assert answer.status_code == 206
        assert answer.headers["Content-Range"] == f"bytes {offset}-{size - 1}/{size}"
        assert answer.content == package.payload_path.read_bytes()[offset:]

        update_id = directive.update_id
        changes = [
            client.report_status(update_id, StatusReport(status=status)).changed
            for status in (Status.DOWNLOADING, Status.DOWNLOADING, Status.COMPLETED)
        ]
        assert changes == [True, False, True]
        late = client.report_status(update_id, StatusReport(status=Status.INSTALLING))
        again = client.report_status(update_id, StatusReport(status=Status.COMPLETED))
        assert (late.status, late.changed) == (Status.COMPLETED, False)  # never backwards
        assert (again.status, again.changed) == (Status.COMPLETED, False)  # repeat accepted
        other_final = client.report_status(update_id, StatusReport(status=Status.ROLLED_BACK))
        assert (other_final.status, other_final.changed) == (Status.COMPLETED, False)
        assert client.heartbeat(HeartbeatRequest(current_version="v1.1.0")).update is None


def _register_args(live_server: LiveServer, root: Path, *extra: str) -> list[str]:
    return [
        "register",
        "--server",
        live_server.url,
        "--api-key",
        live_server.api_key,
        "--install-root",
        str(root / "app"),
        "--state-dir",
        str(root / "state"),
        "--service-mode",
        "command",
        "--start-command",
        "python3 app.py",
        *extra,
    ]


def _device_names(live_server: LiveServer) -> list[str]:
    from javia_updates.admin_client import AdminClient

    with AdminClient(live_server.url, live_server.api_key) as admin:
        return [device.device_name for device in admin.list_devices()]


def test_register_with_an_unwritable_path_leaves_no_device_on_the_server(
    tmp_path: Path, live_server: LiveServer
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for config, token in (
        ("/proc/nope/agent.toml", str(tmp_path / "token")),
        (str(tmp_path / "agent.toml"), str(blocker / "token")),
    ):
        result = CliRunner().invoke(
            agent_cli,
            _register_args(
                live_server, tmp_path, "--name", "orphan", "--config", config, "--token-file", token
            ),
        )
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot write"), result.output
    assert _device_names(live_server) == []
    assert not (tmp_path / "token").exists() and not (tmp_path / "agent.toml").exists()


def test_register_never_overwrites_another_registrations_token_without_force(
    tmp_path: Path, live_server: LiveServer
) -> None:
    token = tmp_path / "shared-token"
    first = CliRunner().invoke(
        agent_cli,
        _register_args(
            live_server,
            tmp_path / "one",
            "--name",
            "one",
            "--config",
            str(tmp_path / "one.toml"),
            "--token-file",
            str(token),
        ),
    )
    assert first.exit_code == 0, first.output
    kept = token.read_text()
    second_args = _register_args(
        live_server,
        tmp_path / "two",
        "--name",
        "two",
        "--config",
        str(tmp_path / "two.toml"),
        "--token-file",
        str(token),
    )
    refused = CliRunner().invoke(agent_cli, second_args)
    assert refused.exit_code == 1 and "--force" in refused.output, refused.output
    assert token.read_text() == kept
    assert _device_names(live_server) == ["one"]
    forced = CliRunner().invoke(agent_cli, [*second_args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert token.read_text() != kept and oct(token.stat().st_mode & 0o777) == "0o600"


def test_run_once_exits_1_when_the_update_it_attempted_rolled_back(
    tmp_path: Path, live_server: LiveServer, signer: Signer, make_package: PackageFactory
) -> None:
    from javia_updates.admin_client import AdminClient

    config_path = tmp_path / "agent.toml"
    registered = CliRunner().invoke(
        agent_cli,
        _register_args(
            live_server,
            tmp_path,
            "--config",
            str(config_path),
            "--token-file",
            str(tmp_path / "token"),
            "--keyring",
            str(signer.keyring_dir),
            "--start-command",
            f'["{sys.executable}", "app.py"]',
            "--app-env",
            f'{{"TEST_APP_STATUS": "{tmp_path / "status.json"}"}}',
            "--health-seconds",
            "0.5",
        ),
    )
    assert registered.exit_code == 0, registered.output
    config = load_config(config_path)
    try:
        installed = CliRunner().invoke(
            agent_cli,
            ["install", str(make_package("v1.0.0").directory), "--config", str(config_path)],
        )
        assert installed.exit_code == 0, installed.output
        package = make_package("v1.1.0", fail=True)
        with AdminClient(live_server.url, live_server.api_key) as admin:
            admin.publish(
                manifest_path=package.manifest_path,
                signature_path=package.signature_path,
                payload_path=package.payload_path,
                update_type="instant",
            )
        once = CliRunner().invoke(agent_cli, ["run", "--once", "--config", str(config_path)])
        assert once.exit_code == 1, once.output
        assert "v1.1.0: rolled_back" in once.output
    finally:
        build_service(config).stop()
