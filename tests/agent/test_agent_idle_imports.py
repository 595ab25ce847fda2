"""The agent that runs all day imports only what it needs between heartbeats.

Issue 7 gives the idle agent 40 MB of resident memory (docs/benchmarks.md):
``javia agent run`` becomes the daemon of :mod:`javia_agent.daemon`, without
the command line (typer, click, rich) or pydantic-settings, and the install
steps import cryptography, the manifest's rules and unpacking only when an
update is installed. A real ``javia agent run`` shows what it imported with
``PYTHONPROFILEIMPORTTIME`` (every import, one line each on stderr).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from javia_agent.config import AgentConfig, write_config, write_token_file
from javia_devtools.demo import javia_command

from .helpers import Signer

#: Never in the idle daemon: the command line, settings loading, install-only code.
NOT_IDLE = (
    "typer",
    "click",
    "rich",
    "pygments",
    "questionary",
    "pydantic_settings",
    "asyncio",
    "dotenv",
    "cryptography",
    "javia_core.manifest",
    "javia_updates.packaging",
    "javia_updates.keys",
    "javia_core.keys",
    "javia_core.package_reader",
    "javia_agent.verification",
    "javia_agent.keyring",
    "javia_agent.cli",
)


def _imports_of_the_last_process(stderr: str) -> set[str]:
    """Modules in the ``-X importtime`` lines after the last interpreter start-up."""
    names = [
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    names = [name for name in names if name != "imported package"]
    starts = [index for index, name in enumerate(names) if name == "site"]
    assert len(starts) >= 2, "expected the command line and then the daemon to start"
    return set(names[starts[-1] :])


def test_javia_agent_run_idles_without_the_command_line_and_install_only_modules(
    tmp_path: Path, signer: Signer
) -> None:
    config = AgentConfig(
        server_url="http://127.0.0.1:9",  # nothing listens: the agent backs off and waits
        device_uuid="00000000-0000-0000-0000-0000000000d7",
        token_file=tmp_path / "token",
        install_root=tmp_path / "app",
        state_dir=tmp_path / "state",
        keyring_dir=signer.keyring_dir,
        service_mode="command",
        start_command=[sys.executable, "app.py"],
    )
    config_path = tmp_path / "agent.toml"
    write_config(config, config_path)
    write_token_file(config.token_file, "device-token")
    env = {key: value for key, value in os.environ.items() if not key.startswith("JAVIA_")}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    agent = subprocess.Popen(
        [*javia_command(), "agent", "run", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.stderr is not None:
            line = agent.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "retry in" in line:  # the first heartbeat failed: the loop now waits
                break
        pid_before = agent.pid
        agent.send_signal(signal.SIGTERM)
        _, rest = agent.communicate(timeout=30)
        lines.append(rest)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    stderr = "".join(lines)
    assert "retry in" in stderr and agent.returncode == 0, stderr[-3000:]
    assert agent.pid == pid_before  # the daemon replaced the command in the same process
    loaded = _imports_of_the_last_process(stderr)
    assert "javia_agent.agent" in loaded and "httpx" in loaded
    unexpected = sorted(
        name for name in loaded if any(name == n or name.startswith(n + ".") for n in NOT_IDLE)
    )
    assert unexpected == []
