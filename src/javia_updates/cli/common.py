"""Shared pieces of the CLI: consoles, operator settings, error reporting.

Operator settings come from the environment (``JAVIA_SERVER_URL``,
``JAVIA_API_KEY``, ``JAVIA_SIGNING_KEY``) over a TOML file
(``JAVIA_OPERATOR_CONFIG``, default ``~/.config/javia/operator.toml``);
command-line flags win over both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict
from rich.console import Console

from javia_updates.errors import JaviaError
from javia_updates.settings_sources import EnvOverTomlSettings

console = Console()
error_console = Console(stderr=True)

DEFAULT_OPERATOR_CONFIG = Path("~/.config/javia/operator.toml").expanduser()
DEFAULT_SIGNING_KEY = Path("~/.config/javia/keys/javia-signing.pem").expanduser()


def _operator_config_path() -> Path:
    import os

    return Path(os.environ.get("JAVIA_OPERATOR_CONFIG", str(DEFAULT_OPERATOR_CONFIG))).expanduser()


class OperatorSettings(EnvOverTomlSettings):
    """Where the operator's commands find the server and the signing key."""

    model_config = SettingsConfigDict(env_prefix="JAVIA_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    signing_key: Path = DEFAULT_SIGNING_KEY

    @classmethod
    def toml_config_path(cls) -> Path:
        """``$JAVIA_OPERATOR_CONFIG`` or ``~/.config/javia/operator.toml``."""
        return _operator_config_path()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line on stderr and exit with ``code``."""
    error_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn javia errors into one red line and exit 1 (DESIGN.md section 1)."""
    try:
        yield
    except JaviaError as error:
        fail(str(error))


def admin_client(server_url: str | None, api_key: str | None):
    """An :class:`AdminClient` from flags over settings; exits with a clear line if no key."""
    from javia_updates.admin_client import AdminClient

    settings = OperatorSettings()
    url = server_url or settings.server_url
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        fail("no admin API key: pass --api-key or set JAVIA_API_KEY")
    return AdminClient(url, key)


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout (for scripts: no colour, no wrapping)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def parse_time(value: str | None) -> datetime | None:
    """Parse an ISO 8601 timestamp from the API into an aware datetime."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def ago(value: str | None, now: datetime | None = None) -> str:
    """``'42 s ago'``-style age of an API timestamp, or ``'never'``."""
    moment = parse_time(value)
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(timezone.utc)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


ServerOption = typer.Option(None, "--server", envvar="JAVIA_SERVER_URL", help="Server base URL.")
ApiKeyOption = typer.Option(
    None, "--api-key", envvar="JAVIA_API_KEY", help="Admin API key.", show_default=False
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
