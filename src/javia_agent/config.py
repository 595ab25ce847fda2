"""Agent configuration and on-disk layout (DESIGN.md section 7).

Settings come, highest priority first, from keyword arguments, the environment
(``JAVIA_AGENT_<FIELD>``, e.g. ``JAVIA_AGENT_SERVER_URL``; lists and tables as
JSON), and the TOML file (default ``/etc/javia/agent.toml``, ``--config PATH``
on every command). ``javia agent register`` writes that file with tomli-w.
The device token never appears in the configuration: it lives in
``token_file`` (mode 0600).

Layout::

    <install_root>/releases/<version>/   complete, verified release trees
    <install_root>/current -> releases/<version>
    <install_root>/envs/<sha256>/        Python environments, shared by releases
                                         with identical requirements.txt
    <state_dir>/state.json               the update state machine
    <state_dir>/heartbeat.json           last heartbeat, for `javia agent status`
    <state_dir>/downloads/<update_id>/   manifest, signature, payload(.partial)
    <state_dir>/outbox/                  status reports not yet delivered
    <state_dir>/activity/activity.json   the application's last activity; the
                                         directory is root:<app group>, mode 2770
                                         (the application writes it, nobody else)
"""

from __future__ import annotations

import functools
import ipaddress
import os
import tempfile
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from javia_agent._fs import atomic_write
from javia_agent.errors import ConfigError
from javia_core.addresses import AddressError
from javia_core.addresses import check_server_url as check_server_url_form
from javia_core.models import load_timezone
from javia_core.scheduling import DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS
from javia_core.staging_lead import DEFAULT_STAGING_LEAD_SECONDS, MAX_STAGING_LEAD_SECONDS
from javia_core.versioning import Version

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "AgentPaths",
    "ServiceMode",
    "check_keyring_dir",
    "check_server_url",
    "check_writable",
    "load_config",
    "read_token",
    "write_config",
    "write_token_file",
]

DEFAULT_CONFIG_PATH = Path("/etc/javia/agent.toml")
CONFIG_PATH_ENV = "JAVIA_AGENT_CONFIG"
#: How the agent runs the application: a systemd unit, or a command it starts itself.
ServiceMode = Literal["systemd", "command"]

_config_file: ContextVar[Path | None] = ContextVar("javia_agent_config_file", default=None)


class AgentConfig(BaseModel):
    """Everything the agent needs to know about its device (DESIGN.md section 7).

    Durations are in seconds, sizes in bytes. Build it with :func:`load_config`,
    which reads keyword arguments, the environment and the TOML file
    (pydantic-settings); constructing it directly takes keyword arguments only.
    """

    model_config = ConfigDict(extra="ignore")

    server_url: str | None = Field(default=None, description="base URL of the javia server")
    device_uuid: uuid.UUID | None = None
    device_name: str | None = None
    token_file: Path = Path("/etc/javia/device-token")
    install_root: Path = Path("/opt/javia/app")
    state_dir: Path = Path("/var/lib/javia")
    keyring_dir: Path = Path("/etc/javia/keys")
    heartbeat_interval_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    heartbeat_jitter: float = Field(
        default=0.1, ge=0, le=0.5, description="fraction of the interval"
    )
    service_mode: ServiceMode = "systemd"
    service_name: str = "javia-app.service"
    start_command: list[str] = Field(
        default_factory=list, description="argv; cwd = current release"
    )
    app_env: dict[str, str] = Field(default_factory=dict)
    stop_timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    request_timeout_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    request_deadline_seconds: float = Field(
        default=60.0, gt=0, description="whole small request, answer included"
    )
    health_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    health_command: list[str] | None = None
    health_command_timeout_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    setup_command: list[str] | None = Field(
        default=None,
        description="argv run in a staged release before the switch (e.g. pip install)",
    )
    apt_command: list[str] = Field(
        default_factory=lambda: ["apt-get", "install", "--yes", "--no-install-recommends", "--"],
        description="argv prefix installing the manifest's signed system_packages",
    )
    staging_lead_seconds: float = Field(
        default=DEFAULT_STAGING_LEAD_SECONDS,
        ge=0,
        le=MAX_STAGING_LEAD_SECONDS,
        description="stage scheduled updates this long before install_at (urgent: at once); "
        "0: at install time",
    )
    keep_releases: int = Field(
        default=1, ge=0, description="previous releases kept besides current"
    )
    download_rate_limit: str | None = Field(
        default=None,
        description="cap on the download speed, e.g. 512KiB (units B, kB, KiB, MB, MiB; per "
        "second); unset: no cap",
    )
    download_rate_limit_bytes_per_second: float | None = Field(
        default=None,
        description="the same cap as a number of bytes per second (older name; "
        "download_rate_limit wins)",
    )
    download_retry_attempts: int = Field(
        default=6, ge=1, description="failed download attempts in a row without progress"
    )
    download_retry_base_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    download_retry_max_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    disk_reserve_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="free bytes left untouched on each file system after download and unpacking",
    )
    python_envs: bool = Field(
        default=True,
        description="build a venv from a release's requirements.txt (shared when identical)",
    )
    venv_python: str | None = Field(
        default=None, description="interpreter for `python -m venv`; default the agent's"
    )
    pip_args: list[str] = Field(
        default_factory=list,
        description="extra `pip install` arguments, e.g. ['--no-index', '--find-links', DIR]",
    )
    pip_timeout_seconds: float = Field(default=1800.0, gt=0, allow_inf_nan=False)
    dpkg_lock_file: Path = Path("/var/lib/dpkg/lock-frontend")
    dpkg_lock_timeout_seconds: float = Field(
        default=300.0, ge=0, description="wait this long for another package manager"
    )
    max_state_saves: int = Field(default=30, ge=5, description="loop breaker: saves per update")
    retry_deadline_seconds: float = Field(
        default=6 * 3600.0,
        ge=0,
        le=30 * 86_400,
        description="transient faults (index, mirror, disk) are retried this long after the "
        "first one, unless the offer's maintenance window ends it (scheduled updates)",
    )
    retry_base_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="first delay after a transient fault"
    )
    retry_max_seconds: float = Field(
        default=1800.0, gt=0, le=86_400, description="longest delay between two tries"
    )
    activity_file: Path | None = Field(
        default=None, description="default <state_dir>/activity/activity.json"
    )
    activity_poll_seconds: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    wakeup: bool = Field(
        default=True,
        description="hold the wake-up channel beside the heartbeat (docs/agent.md); "
        "false: heartbeats only",
    )
    wakeup_wait_seconds: int = Field(
        default=90, ge=5, le=600, description="longest hold asked of the server per wake-up request"
    )
    timezone: str = "UTC"
    window_start: time | None = Field(
        default=None,
        description="pin: device-local start HH:MM of this device's own maintenance window; "
        "unset: the server's window",
    )
    window_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WINDOW_SECONDS,
        description="pin: length of this device's own window in seconds (default 3 h)",
    )

    @field_validator("window_start")
    @classmethod
    def _local_window_start(cls, value: time | None) -> time | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError(
                "window_start is a device-local wall-clock time such as 02:00, without offset"
            )
        return value

    @model_validator(mode="after")
    def _window_pinned_whole(self) -> AgentConfig:
        if self.window_seconds is not None and self.window_start is None:
            raise ValueError(
                "window_seconds pins the device's own maintenance window only together with "
                "window_start (HH:MM device-local, e.g. 02:00)"
            )
        return self

    @property
    def pinned_window(self) -> tuple[time, int] | None:
        """The device's own maintenance window (start, seconds), or None: the server's."""
        if self.window_start is None:
            return None
        return self.window_start, self.window_seconds or DEFAULT_WINDOW_SECONDS

    @field_validator("timezone")
    @classmethod
    def _loadable_timezone(cls, value: str) -> str:
        # Lenient on load: a configuration written before registration refused
        # non-canonical names (``localtime``) must not stop an upgraded agent.
        # ``javia agent register`` checks new names strictly (validate_timezone).
        load_timezone(value)
        return value

    @field_validator("download_rate_limit", mode="before")
    @classmethod
    def _rate(cls, value: object) -> str | None:
        from javia_agent.bandwidth import RATE_FORM, parse_rate

        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected {RATE_FORM}")
        parse_rate(value)
        return str(value).strip()

    @field_validator("download_rate_limit_bytes_per_second", mode="before")
    @classmethod
    def _rate_bytes_per_second(cls, value: object) -> float | None:
        # The older numeric form gets the same rule as ``download_rate_limit``:
        # ``inf``, ``1e99`` or ``0.001`` would crash or stall the token bucket.
        from javia_agent.bandwidth import parse_rate

        text = cls._rate(value)
        return None if text is None else parse_rate(text)

    @property
    def download_rate_limit_bytes(self) -> float | None:
        """The download cap in bytes per second (``download_rate_limit`` first), or ``None``."""
        from javia_agent.bandwidth import parse_rate

        if self.download_rate_limit is not None:
            return parse_rate(self.download_rate_limit)
        return self.download_rate_limit_bytes_per_second

    @field_validator("start_command", "health_command", "setup_command", "apt_command", "pip_args")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not isinstance(part, str) for part in value):
            raise ValueError(
                "a command must be a list of strings (argv), e.g. ['python3', 'app.py']"
            )
        return value

    @property
    def paths(self) -> AgentPaths:
        """The on-disk layout derived from ``install_root`` and ``state_dir``."""
        return AgentPaths.from_config(self)


@functools.cache
def _settings_class() -> type[AgentConfig]:
    """:class:`AgentConfig` read from its sources by pydantic-settings; built on first use.

    Sources, highest priority first: keyword arguments, ``JAVIA_AGENT_<FIELD>``
    environment variables, the TOML file :func:`load_config` names
    (:class:`javia_core.settings_sources.EnvOverTomlSettings`).
    pydantic-settings is imported here, not with this module: with asyncio,
    argparse and python-dotenv it costs about 3 MiB, which the long-running
    agent does not carry (it receives its loaded configuration,
    :mod:`javia_agent.daemon`).
    """
    from pydantic_settings import SettingsConfigDict

    from javia_core.settings_sources import EnvOverTomlSettings

    class AgentSettings(AgentConfig, EnvOverTomlSettings):
        model_config = SettingsConfigDict(env_prefix="JAVIA_AGENT_", extra="forbid")

        @classmethod
        def toml_config_path(cls) -> Path | None:
            return _config_file.get()

    return AgentSettings


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent keeps releases and state (DESIGN.md section 7)."""

    install_root: Path
    state_dir: Path
    activity_file: Path

    @classmethod
    def from_config(cls, config: AgentConfig) -> AgentPaths:
        """Paths for ``config``; the activity file defaults to
        ``<state_dir>/activity/activity.json``.

        The activity file has a directory of its own, the only one the
        application may write (its group, mode 2770): a writable state
        directory would let it replace ``state.json`` or ``app.env``.
        """
        activity = config.activity_file or config.state_dir / "activity" / "activity.json"
        return cls(
            install_root=config.install_root, state_dir=config.state_dir, activity_file=activity
        )

    @property
    def releases_dir(self) -> Path:
        """``<install_root>/releases``: one complete tree per version."""
        return self.install_root / "releases"

    @property
    def current_link(self) -> Path:
        """``<install_root>/current``: symlink to the running release."""
        return self.install_root / "current"

    def release_dir(self, version: Version) -> Path:
        """``<install_root>/releases/<version>``, for a parsed :class:`Version` only.

        A release directory is never built from text: a version that came from
        the server or a file is parsed first (``Version.parse``), so no string
        such as ``../../etc`` or an absolute path can become a directory the
        agent writes or deletes.

        Raises:
            TypeError: ``version`` is not a :class:`Version` (a programming error).
            ValueError: the result would not be a direct child of
                :attr:`releases_dir` (cannot happen for a ``Version``; checked anyway).
        """
        if not isinstance(version, Version):
            raise TypeError(f"release_dir needs a parsed Version, not {type(version).__name__}")
        path = self.releases_dir / str(version)
        if path.parent != self.releases_dir or path.name != str(version):
            raise ValueError(f"release directory {path} is not under {self.releases_dir}")
        return path

    @property
    def envs_dir(self) -> Path:
        """``<install_root>/envs``: Python environments, one per distinct requirements.txt."""
        return self.install_root / "envs"

    @property
    def state_file(self) -> Path:
        """``<state_dir>/state.json``."""
        return self.state_dir / "state.json"

    @property
    def heartbeat_file(self) -> Path:
        """``<state_dir>/heartbeat.json``: last heartbeat answer, informative."""
        return self.state_dir / "heartbeat.json"

    @property
    def downloads_dir(self) -> Path:
        """``<state_dir>/downloads``."""
        return self.state_dir / "downloads"

    def download_dir(self, update_id: int) -> Path:
        """``<state_dir>/downloads/<update_id>``, for a positive whole ``update_id`` only.

        Raises:
            ValueError: ``update_id`` is not an ``int`` from 1 to 2**63 - 1.
        """
        if type(update_id) is not int or not 1 <= update_id <= 2**63 - 1:
            raise ValueError(f"invalid update id {update_id!r}: expected a whole number from 1")
        return self.downloads_dir / str(update_id)

    @property
    def outbox_dir(self) -> Path:
        """``<state_dir>/outbox``: queued status reports."""
        return self.state_dir / "outbox"

    @property
    def lock_file(self) -> Path:
        """``<state_dir>/install.lock``: one installing process at a time."""
        return self.state_dir / "install.lock"

    @property
    def pid_file(self) -> Path:
        """``<state_dir>/app.pid``: the application's pid in command mode."""
        return self.state_dir / "app.pid"

    @property
    def app_log(self) -> Path:
        """``<state_dir>/app.log``: the application's output in command mode."""
        return self.state_dir / "app.log"

    @property
    def application_file(self) -> Path:
        """``<state_dir>/application.json``: the application's restarts since its release became current."""
        return self.state_dir / "application.json"

    @property
    def app_env_file(self) -> Path:
        """``<state_dir>/app.env``: environment for a systemd unit's ``EnvironmentFile=``."""
        return self.state_dir / "app.env"


def _sources(path: Path | None) -> str:
    """Where the configuration came from, for error messages: the file and/or the variables set."""
    variables = sorted(
        name for name in os.environ if name.startswith("JAVIA_AGENT_") and name != CONFIG_PATH_ENV
    )
    named = f"the environment: {', '.join(variables)}" if variables else "the environment"
    if path is None:
        return named
    return f"{path}, and {named}" if variables else str(path)


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    """Load the configuration: ``overrides`` over environment over the TOML file.

    Args:
        path: the TOML file; ``None`` means ``$JAVIA_AGENT_CONFIG`` or
            ``/etc/javia/agent.toml``. A missing file is not an error (all
            defaults apply); an unreadable or malformed one is.
        **overrides: field values that win over every other source.

    Raises:
        ConfigError: the file is not valid TOML, or a value is invalid; the
            message names the field.
    """
    if path is None:
        path = Path(os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"configuration {path} is not a file (expected a TOML file)")
    token = _config_file.set(path if path.exists() else None)
    try:
        settings = _settings_class()(**overrides)
        config = AgentConfig.model_validate(dict(settings))
        return _absolute_paths(config, path, overrides)
    except ValidationError as error:
        raise ConfigError(
            f"invalid agent configuration ({_sources(path)}): {_describe(error)}"
        ) from None
    except PermissionError:
        raise ConfigError(f"cannot read configuration {path}: permission denied") from None
    except ValueError as error:  # tomllib.TOMLDecodeError is a ValueError
        if "EnvSettingsSource" in str(error):  # pydantic-settings could not parse a variable
            raise ConfigError(f"invalid agent configuration in {_sources(None)}: {error}") from None
        raise ConfigError(f"configuration {path} is not valid TOML: {error}") from None
    finally:
        _config_file.reset(token)


#: The settings that name a file or directory: stored and used as absolute paths.
PATH_SETTINGS = (
    "token_file",
    "install_root",
    "state_dir",
    "keyring_dir",
    "ca_bundle",
    "dpkg_lock_file",
    "activity_file",
)


def _absolute_paths(config: AgentConfig, path: Path, overrides: dict[str, Any]) -> AgentConfig:
    """``config`` with every relative path made absolute, so it means the same from any directory.

    A relative path typed now (a keyword argument such as ``javia agent
    register --state-dir state``, or a ``JAVIA_AGENT_*`` variable) is
    relative to the current directory; one read from the TOML file (written
    by an older ``register`` that stored paths as typed) is relative to the
    file's directory. ``..`` is folded; symbolic links are kept as they are.
    """
    changes: dict[str, Path] = {}
    for name in PATH_SETTINGS:
        value = getattr(config, name)
        if value is None or value.is_absolute():
            continue
        typed_now = name in overrides or f"JAVIA_AGENT_{name.upper()}" in os.environ
        base = Path.cwd() if typed_now else path.absolute().parent
        changes[name] = Path(os.path.normpath(base / value.expanduser()))
    return config.model_copy(update=changes) if changes else config


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown setting (a typo? see docs/agent.md for the names)")
            continue
        problems.append(f"{where}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)


def write_config(config: AgentConfig, path: Path) -> None:
    """Write ``config`` as TOML to ``path`` (atomically, mode 0600: never readable by others).

    Only fields that differ from the defaults, plus the identity fields, are
    written, so later defaults still apply. The device token is never part of
    it, but ``app_env`` (the application's environment, which may hold API
    keys) is: the file is created 0600, never wider even briefly
    (``javia agent register`` then opens it to the application's group, 0640).

    Raises:
        ConfigError: the file cannot be written.
    """
    defaults = AgentConfig.model_construct()
    data: dict[str, Any] = {}
    for name in AgentConfig.model_fields:
        value = getattr(config, name)
        if value is None:
            continue
        if name not in ("server_url", "device_uuid") and value == getattr(defaults, name, None):
            continue
        if isinstance(value, (Path, uuid.UUID)):
            value = str(value)
        data[name] = value
    import tomli_w  # only ``javia agent register`` writes the file

    try:
        atomic_write(Path(path), tomli_w.dumps(data).encode("utf-8"), mode=0o600)
    except OSError as error:
        raise ConfigError(f"cannot write configuration {path}: {error.strerror or error}") from None


def check_keyring_dir(directory: Path) -> None:
    """Make sure the keyring directory exists and holds at least one ``*.pub`` key.

    Without a trusted key every package is refused (DESIGN.md section 4:
    fail closed), so an agent with an empty keyring could only fail updates;
    it is a device configuration error, not a fault of the update.

    Raises:
        ConfigError: ``directory`` does not exist, is not a directory, or has
            no ``*.pub`` file; the message says how to fix it.
    """
    directory = Path(directory)
    fix = f"copy the operator's public key (the .pub file from 'javia keys generate') into {directory}"
    if not directory.exists():
        raise ConfigError(f"keyring directory {directory} does not exist: {fix}")
    if not directory.is_dir():
        raise ConfigError(f"keyring {directory} is not a directory of *.pub files: {fix}")
    try:
        has_key = any(path.is_file() for path in directory.glob("*.pub"))
    except OSError as error:
        raise ConfigError(f"cannot read keyring directory {directory}: {error}") from None
    if not has_key:
        raise ConfigError(
            f"keyring directory {directory} has no *.pub key (no trusted keys): {fix}"
        )


def check_writable(path: Path, what: str) -> None:
    """Make sure ``path`` can be created or replaced, before anything depends on it.

    Creates the missing parent directories, then creates and removes a temporary
    file next to ``path`` (the way :func:`atomic_write` will write it), so a
    later write fails only on a full disk. ``javia agent register`` calls this
    for the configuration and the token file before it contacts the server, so
    a refused write never leaves a device registered on the server.

    Args:
        path: the file that will be written.
        what: how the error names it, e.g. ``"configuration"``.

    Raises:
        ConfigError: ``path`` is a directory, or its directory cannot be
            created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {what} {path}: it is a directory (expected a file path)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".check", dir=path.parent
        )
        os.close(descriptor)
        os.unlink(temp_name)
    except OSError as error:
        raise ConfigError(
            f"cannot write {what} {path}: {error.strerror or error} "
            "(choose a writable path or run as a user who may write there)"
        ) from None


def write_token_file(path: Path, token: str) -> None:
    """Store the device token in ``path`` with mode 0600 (never wider, even briefly).

    Raises:
        ConfigError: the file cannot be written.
    """
    try:
        atomic_write(Path(path), token.encode("utf-8") + b"\n", mode=0o600)
    except OSError as error:
        raise ConfigError(f"cannot write token file {path}: {error.strerror or error}") from None


def read_token(path: Path) -> str:
    """Read the device token from ``path``.

    Raises:
        ConfigError: the file is missing, unreadable or empty (run ``javia
            agent register`` first).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"device token file {path} does not exist: register the device first "
            "(javia agent register --server URL --api-key KEY)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read device token file {path}: {error}") from None
    if not token:
        raise ConfigError(f"device token file {path} is empty: register the device again")
    # A token is one word of printable ASCII (it travels in an HTTP header).
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(
            f"device token file {path} is malformed: expected the one-line token from "
            "registration (register the device again)"
        )
    return token


def check_server_url(url: str, *, allow_insecure_http: bool) -> str:
    """Return ``url`` without a trailing slash if the agent may talk to it.

    ``https://`` is always allowed; plain ``http://`` only to a loopback host
    (``localhost``, ``127.0.0.0/8``, ``::1``) unless ``allow_insecure_http`` is
    set, because the device token would otherwise cross the network in clear.

    Raises:
        ConfigError: the URL is not ``http(s)://host[:port][/path]``
            (:func:`javia_core.addresses.check_server_url`), or is plain
            http to another host without ``allow_insecure_http``.
    """
    try:
        check_server_url_form(url)
    except AddressError as error:
        raise ConfigError(str(error)) from None
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"invalid server URL {url[:200]!r}: no credentials, query or fragment")
    host = parts.hostname or ""  # never empty: check_server_url_form refuses a URL without host
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(host):
        raise ConfigError(
            f"refusing plain http to {host}: use https://, or set "
            "allow_insecure_http = true for a trusted network"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
