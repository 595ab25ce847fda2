"""Paths in the agent's configuration mean the same from every directory.

``javia agent register`` run in one directory with relative paths, then
``javia agent install`` and ``status`` run from others: the device is found
running what it installed. An older ``agent.toml`` that stored relative
paths is read relative to the file's own directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from javia_agent.agent import build_service
from javia_agent.config import PATH_SETTINGS, load_config
from shared_helpers import server_process

from .helpers import PackageFactory, Signer

API_KEY = "agent-paths-admin-key-0123456789"


def _agent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    return subprocess.run(
        [sys.executable, "-m", "javia_cli.main", "agent", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_register_stores_absolute_paths_and_the_device_works_from_any_directory(
    tmp_path: Path, signer: Signer, make_package: PackageFactory
) -> None:
    device_dir, elsewhere = tmp_path / "device", tmp_path / "elsewhere"
    device_dir.mkdir()
    elsewhere.mkdir()
    shutil.copytree(signer.keyring_dir, device_dir / "keys")
    with server_process(tmp_path, API_KEY) as (url, _log):
        registered = _agent(
            "register", "--server", url, "--api-key", API_KEY, "--config", "agent.toml",
            "--token-file", "token", "--install-root", "app", "--state-dir", "./state/../var",
            "--keyring", "keys", "--service-mode", "command",
            "--start-command", f"{sys.executable} app.py", "--health-seconds", "0.5",
            "--app-env", json.dumps({"TEST_APP_STATUS": str(tmp_path / "status.json")}),
            cwd=device_dir,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr
    config_file = device_dir / "agent.toml"
    stored = tomllib.loads(config_file.read_text())
    expected = {
        "token_file": device_dir / "token",
        "install_root": device_dir / "app",
        "state_dir": device_dir / "var",
        "keyring_dir": device_dir / "keys",
    }
    for name, path in expected.items():
        assert stored[name] == str(path), stored
    config = load_config(config_file)
    try:
        installed = _agent(
            "install", str(make_package("v1.0.0").directory), "--config", str(config_file),
            cwd=elsewhere,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        status = _agent("status", "--json", "--config", str(config_file), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["current_version"] == "v1.0.0"
    finally:
        build_service(config).stop()


def test_relative_paths_of_an_older_configuration_are_relative_to_its_file(
    tmp_path: Path, monkeypatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text(
        'server_url = "https://updates.example"\n'
        'token_file = "token"\ninstall_root = "../opt/app"\nstate_dir = "var"\n'
        'keyring_dir = "keys"\nactivity_file = "var/activity.json"\n'
    )
    monkeypatch.chdir(tmp_path / "..")
    config = load_config(etc / "agent.toml")
    assert config.token_file == etc / "token"
    assert config.install_root == tmp_path / "opt" / "app"
    assert config.state_dir == etc / "var"
    assert config.activity_file == etc / "var" / "activity.json"
    assert all(
        getattr(config, name) is None or getattr(config, name).is_absolute()
        for name in PATH_SETTINGS
    )
    # Typed now (a variable, or a keyword argument): relative to the current directory.
    monkeypatch.setenv("JAVIA_AGENT_STATE_DIR", "here")
    assert load_config(etc / "agent.toml").state_dir == tmp_path.parent / "here"
    assert load_config(etc / "agent.toml", keyring_dir="k").keyring_dir == tmp_path.parent / "k"
