"""``javia agent ...`` commands: exit codes, one-line errors, configuration files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from datetime import time as dt_time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from javia_agent.cli import app
from javia_agent.config import (
    AgentConfig,
    load_config,
    read_token,
    write_config,
    write_token_file,
)
from javia_agent.errors import ConfigError

from .helpers import PackageFactory, Signer

runner = CliRunner()
TOKEN = "s3cret-device-token-value"


def _javia() -> list[str]:
    return [sys.executable, "-m", "javia_cli.main"]


def test_verify_accepts_a_good_package(signer: Signer, make_package: PackageFactory) -> None:
    package = make_package("v1.0.0")
    result = runner.invoke(
        app, ["verify", str(package.directory), "--keyring", str(signer.keyring_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "accepted: assistant v1.0.0" in result.output and signer.key_id in result.output


def test_verify_refuses_with_exit_1_and_one_line(
    signer: Signer, other_signer: Signer, make_package: PackageFactory, tmp_path: Path
) -> None:
    keyring = ["--keyring", str(signer.keyring_dir)]
    untrusted = runner.invoke(
        app,
        ["verify", str(make_package("v1.0.0", key=other_signer.private_key).directory), *keyring],
    )
    downgrade = runner.invoke(
        app,
        ["verify", str(make_package("v1.0.0").directory), *keyring, "--current-version", "v1.2.0"],
    )
    missing = runner.invoke(app, ["verify", str(tmp_path / "nothing"), *keyring])
    empty_keyring = runner.invoke(
        app,
        ["verify", str(make_package("v1.0.0").directory), "--keyring", str(tmp_path / "no-keys")],
    )
    for result, words in (
        (untrusted, "not in the keyring"),
        (downgrade, "downgrade"),
        (missing, "does not exist"),
        (empty_keyring, "does not exist"),
    ):
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], (
            result.output
        )
        assert "Traceback" not in result.output


def test_verify_through_the_javia_command_prints_no_traceback(
    other_signer: Signer, signer: Signer, make_package: PackageFactory
) -> None:
    package = make_package("v1.0.0")
    payload = package.payload_path.read_bytes()
    tampered = package.directory.parent / "tampered"
    tampered.mkdir(exist_ok=True)
    for name in ("manifest.json", "manifest.sig"):
        (tampered / name).write_bytes((package.directory / name).read_bytes())
    (tampered / "payload.tar.gz").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    ok = subprocess.run(
        [
            *_javia(),
            "agent",
            "verify",
            str(package.directory),
            "--keyring",
            str(signer.keyring_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    bad = subprocess.run(
        [*_javia(), "agent", "verify", str(tampered), "--keyring", str(signer.keyring_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 1
    assert "SHA-256" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def _device_config(tmp_path: Path, signer: Signer, **extra) -> Path:
    settings = {
        "server_url": "http://127.0.0.1:9",
        "device_uuid": "00000000-0000-0000-0000-0000000000d1",
        "token_file": tmp_path / "etc" / "token",
        "install_root": tmp_path / "opt" / "app",
        "state_dir": tmp_path / "var",
        "keyring_dir": signer.keyring_dir,
        "service_mode": "command",
        "start_command": [sys.executable, "app.py"],
        "app_env": {"TEST_APP_STATUS": str(tmp_path / "status.json")},
        "health_seconds": 0.5,
        **extra,
    }
    config = AgentConfig(**settings)
    path = tmp_path / "etc" / "agent.toml"
    write_config(config, path)
    write_token_file(config.token_file, TOKEN)
    return path


def _stop_app(config_path: Path) -> None:
    from javia_agent.agent import build_service

    build_service(load_config(config_path)).stop()


def test_install_status_and_activity_commands(
    tmp_path: Path, signer: Signer, make_package: PackageFactory
) -> None:
    config = _device_config(tmp_path, signer)
    try:
        result = runner.invoke(
            app, ["install", str(make_package("v1.0.0").directory), "--config", str(config)]
        )
        assert result.exit_code == 0, result.output
        assert "installed v1.0.0" in result.output

        again = runner.invoke(
            app, ["install", str(make_package("v1.0.0").directory), "--config", str(config)]
        )
        assert again.exit_code == 1 and "not newer" in again.output

        status = runner.invoke(app, ["status", "--json", "--config", str(config)])
        assert status.exit_code == 0, status.output
        body = json.loads(status.output)
        assert body["current_version"] == "v1.0.0" and body["app_active"] is True
        assert body["state"] == "idle" and body["last_heartbeat"] is None
        human = runner.invoke(app, ["status", "--config", str(config)])
        assert "v1.0.0" in human.output and "never" in human.output

        activity = runner.invoke(app, ["activity", "--config", str(config)])
        assert activity.exit_code == 0, activity.output
        record = tmp_path / "var" / "activity" / "activity.json"
        assert json.loads(record.read_text())["counter"] == 1
    finally:
        _stop_app(config)


def test_verify_without_current_version_refuses_what_install_refuses(
    tmp_path: Path, signer: Signer, make_package: PackageFactory
) -> None:
    config = _device_config(tmp_path, signer)
    try:
        installed = runner.invoke(
            app, ["install", str(make_package("v1.2.0").directory), "--config", str(config)]
        )
        assert installed.exit_code == 0, installed.output
        older = str(make_package("v1.0.0").directory)
        verify = runner.invoke(app, ["verify", older, "--config", str(config)])
        install = runner.invoke(app, ["install", older, "--config", str(config)])
        assert install.exit_code == 1
        assert verify.exit_code == 1 and "downgrade" in verify.output, verify.output
        newer = runner.invoke(
            app, ["verify", str(make_package("v1.3.0").directory), "--config", str(config)]
        )
        assert newer.exit_code == 0, newer.output
    finally:
        _stop_app(config)


def test_verify_with_an_empty_keyring_names_the_directory_and_the_fix(
    tmp_path: Path, make_package: PackageFactory
) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    result = runner.invoke(
        app, ["verify", str(make_package("v1.0.0").directory), "--keyring", str(empty)]
    )
    assert result.exit_code == 1
    assert str(empty) in result.output and ".pub" in result.output, result.output


def test_config_file_environment_and_flags_priority(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _device_config(tmp_path, signer)
    written = tomllib.loads(path.read_text())
    assert TOKEN not in path.read_text()  # the token lives in its own 0600 file only
    assert written["service_mode"] == "command"
    assert oct((tmp_path / "etc" / "token").stat().st_mode & 0o777) == "0o600"
    assert load_config(path).health_seconds == 0.5
    monkeypatch.setenv("JAVIA_AGENT_HEALTH_SECONDS", "7")
    assert load_config(path).health_seconds == 7.0
    assert load_config(path, health_seconds=9).health_seconds == 9.0
    (tmp_path / "bad.toml").write_text("health_seconds = [")
    result = runner.invoke(app, ["status", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 1 and "not valid TOML" in result.output


def test_a_second_agent_on_the_same_state_directory_is_refused(
    tmp_path: Path, signer: Signer
) -> None:
    from javia_agent.agent import Agent

    config = load_config(_device_config(tmp_path, signer))
    first = Agent.from_config(config)
    try:
        with pytest.raises(ConfigError, match=rf"another javia agent \(process {os.getpid()}\)"):
            Agent.from_config(config)
        result = runner.invoke(
            app, ["run", "--once", "--config", str(tmp_path / "etc" / "agent.toml")]
        )
        assert result.exit_code == 1 and "another javia agent" in result.output
    finally:
        first.client.close()
        assert first.instance_lock is not None
        first.instance_lock.close()  # as when the first agent's process ends
    second = Agent.from_config(config)  # the lock went with it: no stale lock file blocks
    second.client.close()


def test_an_unknown_setting_in_the_file_is_refused_by_name(tmp_path: Path, signer: Signer) -> None:
    path = _device_config(tmp_path, signer)
    path.write_text("helth_seconds = 3\n" + path.read_text())  # top level, before any table
    with pytest.raises(ConfigError, match="helth_seconds: unknown setting"):
        load_config(path)


def test_a_bad_environment_variable_is_named_and_the_file_is_not_blamed(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _device_config(tmp_path, signer)
    monkeypatch.setenv("JAVIA_AGENT_START_COMMAND", "[unclosed")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "JAVIA_AGENT_START_COMMAND" in str(refused.value)
    assert "not valid TOML" not in str(refused.value)
    monkeypatch.delenv("JAVIA_AGENT_START_COMMAND")
    monkeypatch.setenv("JAVIA_AGENT_HEALTH_SECONDS", "abc")
    with pytest.raises(ConfigError, match="JAVIA_AGENT_HEALTH_SECONDS.*health_seconds"):
        load_config(path)


@pytest.mark.parametrize("content", ["abc\ndef\n", "tok en\n", "caf\u00e9\n"])
def test_a_malformed_token_file_is_named_not_reported_as_a_network_error(
    tmp_path: Path, content: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="is malformed"):
        read_token(token_file)
    token_file.write_text("  a-good-token_0123\n")
    assert read_token(token_file) == "a-good-token_0123"


def test_register_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "register",
            "--server",
            "http://192.0.2.10:8000",
            "--api-key",
            "k",
            "--config",
            str(tmp_path / "a.toml"),
        ],
    )
    assert result.exit_code == 1
    assert "refusing plain http" in result.output
    assert not (tmp_path / "a.toml").exists()


def test_register_with_a_malformed_uuid_is_one_red_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "register",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--uuid",
            "not-a-uuid",
            "--config",
            str(tmp_path / "a.toml"),
            "--token-file",
            str(tmp_path / "token"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--uuid" in lines[0] and "not a UUID" in lines[0], result.output
    assert not (tmp_path / "a.toml").exists()


def test_register_in_command_mode_needs_a_start_command(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "register",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--service-mode",
            "command",
            "--config",
            str(tmp_path / "a.toml"),
            "--token-file",
            str(tmp_path / "token"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--start-command" in lines[0], result.output
    assert not (tmp_path / "a.toml").exists() and not (tmp_path / "token").exists()


@pytest.mark.parametrize(
    "command",
    [["run", "--once"], ["status"], ["activity"], ["install", "."], ["verify", "."]],
)
def test_an_explicit_config_path_that_does_not_exist_is_an_error(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexistent.toml"
    result = runner.invoke(app, [*command, "--config", str(missing)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and str(missing) in lines[0], (
        result.output
    )
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere under it


def test_run_refuses_to_start_without_a_trusted_key(tmp_path: Path, signer: Signer) -> None:
    missing = tmp_path / "keys"
    config = _device_config(tmp_path, signer, keyring_dir=missing)
    result = runner.invoke(app, ["run", "--once", "--config", str(config)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and ".pub" in lines[0], result.output
    missing.mkdir()
    empty = runner.invoke(app, ["run", "--once", "--config", str(config)])
    assert empty.exit_code == 1 and "no *.pub key" in empty.output, empty.output


def test_run_exits_0_on_sigterm_even_while_the_server_is_unreachable(
    tmp_path: Path, signer: Signer
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _device_config(tmp_path, signer, server_url=f"http://127.0.0.1:{port}")
    agent = subprocess.Popen(
        [*_javia(), "agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JAVIA_AGENT_CONFIG": ""},
    )
    try:
        log = tmp_path / "seen"
        deadline = time.monotonic() + 30
        output = b""
        # Wait until it has tried once and is backing off.
        while time.monotonic() < deadline and b"retry in" not in output:
            line = agent.stdout.readline() if agent.stdout else b""
            output += line
        assert b"retry in" in output, output
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=10)
        output += agent.stdout.read() if agent.stdout else b""
        log.write_bytes(output)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert code == 0
    assert b"Traceback" not in output and b"stopped" in output


def test_a_pinned_maintenance_window_round_trips_through_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AgentConfig().pinned_window is None  # unset by default: the server's window
    path = tmp_path / "agent.toml"
    write_config(
        load_config(
            path, server_url="https://u.example", window_start="02:00", window_seconds=7200
        ),
        path,
    )
    text = path.read_text()
    assert "window_start" in text and "window_seconds = 7200" in text
    loaded = load_config(path)
    assert loaded.pinned_window == (dt_time(2, 0), 7200)
    # The length defaults to 3 h; the environment sets it like any setting.
    monkeypatch.setenv("JAVIA_AGENT_WINDOW_START", "23:30")
    assert load_config(tmp_path / "none.toml").pinned_window == (dt_time(23, 30), 10_800)


def test_the_staging_lead_help_says_urgent_updates_stage_at_once() -> None:
    # docs/agent.md, "Staging": the lead applies to scheduled updates only.
    import typer.main

    register = typer.main.get_command(app).commands["register"]  # type: ignore[attr-defined]
    (option,) = [param for param in register.params if "--staging-lead" in param.opts]
    assert "Stage scheduled updates this long" in option.help
    assert "urgent ones at once" in option.help
    assert "scheduled and urgent" not in option.help


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--window-start", "25:00"], "window_start"),
        (["--window-start", "02:00+01:00"], "window_start"),
        (["--window-start", "02:00", "--window-seconds", "0"], "window_seconds"),
        (["--window-start", "02:00", "--window-seconds", "86401"], "window_seconds"),
        (["--window-seconds", "3600"], "only together with window_start"),
        (["--staging-lead", "8d"], "--staging-lead: staging lead must be 0 to 604800 seconds"),
        (["--staging-lead", "soon"], "--staging-lead: invalid duration 'soon'"),
        (["--staging-lead", "-1h"], "--staging-lead: invalid duration"),
    ],
)
def test_register_refuses_a_pinned_window_that_is_not_one_before_contacting_the_server(
    tmp_path: Path, arguments: list[str], named: str
) -> None:
    result = runner.invoke(
        app,
        [
            "register",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            *arguments,
            "--config",
            str(tmp_path / "a.toml"),
            "--token-file",
            str(tmp_path / "token"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert named in result.output, result.output
    assert not (tmp_path / "a.toml").exists() and not (tmp_path / "token").exists()


def test_the_staging_lead_is_a_duration_in_seconds() -> None:
    from javia_agent.cli import _staging_lead

    assert _staging_lead("90m") == 5400.0
    assert _staging_lead("1d") == 86400.0
    assert _staging_lead("0") == 0.0  # staged at install time
