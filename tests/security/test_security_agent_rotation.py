"""Key rotation through the agent's own install path (``javia agent install``, a real app process).

The installer applies a committed package's keyring changes in its commit step
(:func:`javia_agent.keyring.apply_package_keyring_changes`). Until that step is
wired into ``javia_agent/installer.py`` this test is an expected failure
(strict: once the wiring lands it passes, and the marker must go).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from security_helpers import START
from typer.testing import CliRunner

from javia_agent.cli import app as agent_app
from javia_agent.config import AgentConfig, load_config, write_config
from javia_core.keys import load_keyring
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.keys import generate_keypair, load_private_key
from javia_updates.packaging import build_package

APP = "import time\nwhile True:\n    time.sleep(1)\n"


def _package(app: Path, out: Path, version: str, key: Ed25519PrivateKey, **changes: object) -> Path:
    build_package(
        app,
        out,
        version=Version.parse(version),
        update_type=UpdateType.SCHEDULED,
        description="",
        system_packages=(),
        private_key=key,
        now=START,
        write_version_file=False,
        **changes,  # type: ignore[arg-type]
    )
    return out


def test_rotation_through_javia_agent_install(tmp_path: Path) -> None:
    keys = tmp_path / "operator"
    old = generate_keypair(keys, name="old")
    new = generate_keypair(keys, name="new")
    old_key, new_key = load_private_key(old.private_path), load_private_key(new.private_path)
    keyring = tmp_path / "etc" / "keys"
    keyring.mkdir(parents=True)
    (keyring / "javia-signing.pub").write_bytes(old.public_path.read_bytes())
    app = tmp_path / "pi_client"
    app.mkdir()
    (app / "VERSION").write_text("v1.0.0\n")
    (app / "app.py").write_text(APP)
    config = AgentConfig(
        server_url="http://127.0.0.1:9",
        token_file=tmp_path / "etc" / "token",
        install_root=tmp_path / "opt" / "app",
        state_dir=tmp_path / "var",
        keyring_dir=keyring,
        service_mode="command",
        start_command=[sys.executable, "app.py"],
        health_seconds=0.3,
    )
    config_path = tmp_path / "etc" / "agent.toml"
    write_config(config, config_path)
    runner = CliRunner()

    def install(package: Path) -> tuple[int, str]:
        result = runner.invoke(agent_app, ["install", str(package), "--config", str(config_path)])
        return result.exit_code, result.output

    try:
        assert install(_package(app, tmp_path / "p100", "v1.0.0", old_key))[0] == 0
        introducing = _package(
            app, tmp_path / "p110", "v1.1.0", old_key, add_keys=[new.public_path]
        )
        assert install(introducing)[0] == 0
        assert set(load_keyring(keyring)) == {old.key_id, new.key_id}
        retiring = _package(app, tmp_path / "p120", "v1.2.0", new_key, retire_keys=[old.key_id])
        assert install(retiring)[0] == 0
        assert set(load_keyring(keyring)) == {new.key_id}
        code, output = install(_package(app, tmp_path / "p130", "v1.3.0", old_key))
        assert code == 1 and "not in the keyring" in output
    finally:
        from javia_agent.agent import build_service

        build_service(load_config(config_path)).stop()
