"""The agent fits a Pi: it never imports the server's dependencies (DESIGN.md section 1)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("fastapi", "sqlalchemy", "alembic", "uvicorn", "questionary", "starlette")


def test_every_agent_module_imports_without_server_dependencies() -> None:
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import javia_agent\n"
        "for module in pkgutil.iter_modules(javia_agent.__path__):\n"
        "    importlib.import_module('javia_agent.' + module.name)\n"
        "from typer.testing import CliRunner\n"
        "CliRunner().invoke(javia_agent.cli.app, ['--help'])\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "loaded = sorted({name.split('.')[0] for name in sys.modules} & set(forbidden))\n"
        "server = sorted(n for n in sys.modules if n.startswith(('javia_updates.server', "
        "'javia_updates.backends', 'javia_updates.service')))\n"
        "print(json.dumps(loaded + server))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []
