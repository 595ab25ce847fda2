"""``javia agent ...``: the commands run on a device (DESIGN.md sections 3 and 7).

Mounted by the root CLI as ``javia agent``. Every command takes ``--config
PATH`` (env ``JAVIA_AGENT_CONFIG``, default ``/etc/javia/agent.toml``). Errors
are one red line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

import typer

from javia_agent._fs import restrict_umask
from javia_agent.config import (
    CONFIG_PATH_ENV,
    AgentConfig,
    ServiceMode,
    check_keyring_dir,
    check_server_url,
    check_writable,
    load_config,
    write_config,
    write_token_file,
)
from javia_agent.daemon import exec_daemon, setup_logging
from javia_agent.errors import ConfigError
from javia_core.errors import JaviaError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["app"]

app = typer.Typer(
    help="Run and inspect the javia agent on a device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _agent_commands() -> None:
    """Run and inspect the javia agent on a device."""
    # The agent runs as root and writes state, configuration and releases:
    # never group- or world-writable, whatever umask it was started with
    # (systemd's default UMask is 0022; a shell may have 0000).
    restrict_umask()


ConfigOption = typer.Option(
    None,
    "--config",
    envvar=CONFIG_PATH_ENV,
    help="Agent configuration file (TOML).",
    show_default="/etc/javia/agent.toml",
)


@functools.cache
def _console(stderr: bool = False) -> Console:
    """rich's console for stdout (or stderr), made on first output.

    Not at import: ``javia agent run`` prints nothing on success and keeps
    rich's rendering modules out of the idle agent (docs/benchmarks.md).
    """
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, code: int = 1) -> NoReturn:
    _console(stderr=True).print(
        f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True
    )
    raise typer.Exit(code)


def _friendly(function: F) -> F:
    """Turn javia errors (and file-system errors) into one red line and exit 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except JaviaError as error:
            _fail(_escape(str(error)))
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            _fail(_escape(f"{error.strerror or error}{where}"))

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def _argv(text: str | None, what: str) -> list[str] | None:
    """A command given as a JSON list or a shell-quoted string."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{what} is not a JSON list of strings: {error}") from None
        if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
            raise ConfigError(f'{what} must be a JSON list of strings, e.g. ["python3", "app.py"]')
        return value
    try:
        parts = shlex.split(text)
    except ValueError as error:
        raise ConfigError(f"{what} is not a valid command line: {error}") from None
    if not parts:
        raise ConfigError(f"{what} is empty: expected e.g. 'python3 app.py'")
    return parts


def _staging_lead(text: str) -> float:
    """``--staging-lead``: a duration (``6h``, ``90m``, ``0``) within 0 to 7 days, in seconds."""
    from javia_core.rollouts.policy import parse_duration
    from javia_core.staging_lead import check_staging_lead

    try:
        return check_staging_lead(parse_duration(text[:40]))
    except ValueError as error:  # RolloutError, ScheduleError
        raise ConfigError(f"--staging-lead: {error}") from None


@app.command()
@_friendly
def register(
    server: str = typer.Option(
        ..., "--server", help="Server base URL, e.g. https://updates.example.org."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="JAVIA_API_KEY", help="Admin API key (used once; never stored)."
    ),
    enrollment_token: str | None = typer.Option(
        None,
        "--enrollment-token",
        envvar="JAVIA_ENROLLMENT_TOKEN",
        help="Enrollment token from 'javia devices enrollment-token create' (instead of the admin key).",
    ),
    name: str | None = typer.Option(None, "--name", help="Device name shown to operators."),
    timezone: str | None = typer.Option(
        None, "--timezone", help="IANA timezone, e.g. Europe/Berlin."
    ),
    window_start: str | None = typer.Option(
        None,
        "--window-start",
        help="Pin this device's own maintenance window: device-local start HH:MM, e.g. 02:00 "
        "(default: the server's window). Scheduled updates then install only inside it.",
    ),
    window_seconds: int | None = typer.Option(
        None,
        "--window-seconds",
        help="Length of the pinned window in seconds (with --window-start; default 10800).",
    ),
    device_uuid: str | None = typer.Option(
        None, "--uuid", help="Use this device uuid (default: server picks)."
    ),
    config_path: Path | None = ConfigOption,
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Where to store the device token (0600)."
    ),
    install_root: Path | None = typer.Option(
        None, "--install-root", help="releases/ and current live here."
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="State, downloads, outbox, activity."
    ),
    keyring: Path | None = typer.Option(None, "--keyring", help="Directory of trusted *.pub keys."),
    service_mode: str | None = typer.Option(
        None,
        "--service-mode",
        help="systemd or command.",
        autocompletion=lambda incomplete: [
            mode for mode in get_args(ServiceMode) if mode.startswith(incomplete)
        ],
    ),
    service_name: str | None = typer.Option(
        None, "--service-name", help="systemd unit of the application."
    ),
    start_command: str | None = typer.Option(
        None, "--start-command", help="Command mode: argv as a JSON list or a shell-quoted string."
    ),
    health_command: str | None = typer.Option(
        None, "--health-command", help="Optional health check command (JSON list or string)."
    ),
    app_env: str | None = typer.Option(
        None, "--app-env", help="Extra app environment as a JSON object."
    ),
    heartbeat_interval: float | None = typer.Option(None, "--heartbeat-interval", help="Seconds."),
    health_seconds: float | None = typer.Option(
        None, "--health-seconds", help="Seconds a new release must stay up."
    ),
    ca_bundle: Path | None = typer.Option(
        None, "--ca-bundle", help="PEM CA bundle for the server's TLS."
    ),
    allow_insecure_http: bool = typer.Option(
        False, "--allow-insecure-http", help="Allow plain http:// to a non-loopback server."
    ),
    force: bool = typer.Option(
        False, "--force", help="Register again although already registered."
    ),
    app_group: str | None = typer.Option(
        None,
        "--app-group",
        help="Group of the application's user: it may record activity in "
        "<state-dir>/activity/ and read the configuration.",
        show_default="javia-app",
    ),
    download_rate_limit: str | None = typer.Option(
        None,
        "--download-rate-limit",
        help="Cap on the download speed per second, e.g. 512KiB or 2MB "
        "(units B, kB, KiB, MB, MiB; default: no cap).",
    ),
    staging_lead: str | None = typer.Option(
        None,
        "--staging-lead",
        help="Stage scheduled updates this long before their install time, urgent ones at "
        "once, e.g. 6h, 90m, 1d (0: both at install time; default 6h).",
    ),
    tag: list[str] | None = typer.Option(
        None,
        "--tag",
        help="Operator tag of this device, e.g. kitchen (repeatable; 'javia publish --tag').",
    ),
) -> None:
    """Register this device with the server; write the configuration and the token file.

    Also prepares the directory where the application records activity
    (``<state_dir>/activity/``, root:``--app-group``, mode 2770) and gives the
    configuration (mode 0640: it holds ``--app-env``) to that group.
    """
    from javia_agent.client import DeviceClient
    from javia_agent.inventory import device_metadata
    from javia_core.models import DeviceRegisterRequest

    if (api_key is None) == (enrollment_token is None):
        raise ConfigError(
            "pass exactly one of --api-key (the operator's admin key) or --enrollment-token"
        )
    parsed_uuid: uuid.UUID | None = None
    if device_uuid is not None:
        try:
            parsed_uuid = uuid.UUID(device_uuid)
        except ValueError:
            raise ConfigError(
                f"--uuid {device_uuid[:80]!r} is not a UUID: expected e.g. "
                "123e4567-e89b-12d3-a456-426614174000"
            ) from None
    if timezone is not None:
        from javia_core.models import validate_timezone

        try:
            validate_timezone(timezone)  # new input: canonical IANA names only
        except ValueError as error:
            raise ConfigError(f"--timezone: {error}") from None
    tags = _checked_tags(tag or [])
    if download_rate_limit is not None:
        from javia_agent.bandwidth import parse_rate

        try:
            parse_rate(download_rate_limit)
        except ValueError as error:
            raise ConfigError(f"--download-rate-limit: {error}") from None
    overrides: dict[str, Any] = {"server_url": server}
    if staging_lead is not None:
        overrides["staging_lead_seconds"] = _staging_lead(staging_lead)
    for key, value in {
        "device_name": name,
        "timezone": timezone,
        "token_file": token_file,
        "install_root": install_root,
        "state_dir": state_dir,
        "keyring_dir": keyring,
        "service_mode": service_mode,
        "service_name": service_name,
        "start_command": _argv(start_command, "--start-command"),
        "health_command": _argv(health_command, "--health-command"),
        "heartbeat_interval_seconds": heartbeat_interval,
        "health_seconds": health_seconds,
        "ca_bundle": ca_bundle,
        "window_start": window_start,
        "window_seconds": window_seconds,
        "download_rate_limit": download_rate_limit,
    }.items():
        if value is not None:
            overrides[key] = value
    if allow_insecure_http:
        overrides["allow_insecure_http"] = True
    if app_env is not None:
        try:
            env = json.loads(app_env)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--app-env is not a JSON object: {error}") from None
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(
                '--app-env must be a JSON object of strings, e.g. {"LANG": "C.UTF-8"}'
            )
        overrides["app_env"] = env
    config = load_config(config_path, **overrides)
    path = _config_path(config_path)
    if config.service_mode == "command" and not config.start_command:
        raise ConfigError(
            "--service-mode command needs --start-command (the application's argv, e.g. "
            "'python3 app.py'), run in the current release"
        )
    if config.device_uuid is not None and config.token_file.exists() and not force:
        raise ConfigError(
            f"already registered as {config.device_uuid} ({path}); pass --force to register again"
        )
    if config.token_file.exists() and not force:
        raise ConfigError(
            f"token file {config.token_file} already exists (another registration's token?); "
            "pass --force to overwrite it, or choose another --token-file"
        )
    url = check_server_url(server, allow_insecure_http=config.allow_insecure_http)
    # Everything that can fail locally fails before the server creates a device.
    check_writable(path, "configuration")
    check_writable(config.token_file, "token file")
    gid = _prepare_activity(config, app_group)
    request = DeviceRegisterRequest(
        device_uuid=parsed_uuid,
        device_name=config.device_name,
        timezone=config.timezone,
        metadata={},
        tags=tags,
    )
    with DeviceClient(
        url,
        ca_bundle=config.ca_bundle,
        allow_insecure_http=config.allow_insecure_http,
        timeout_seconds=config.request_timeout_seconds,
    ) as client:
        request.metadata.update(device_metadata(config.install_root, ip_address=None))
        registered = client.register(api_key, request, enrollment_token=enrollment_token)
    config = config.model_copy(update={"device_uuid": registered.device_uuid, "server_url": url})
    write_token_file(config.token_file, registered.device_token)
    write_config(config, path)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)
    _console().print(
        f"registered device {registered.device_uuid}"
        + (f" ({_escape(registered.device_name)})" if registered.device_name else "")
        + f"; configuration {_escape(str(path))}, token {_escape(str(config.token_file))}",
        highlight=False,
    )


def _checked_tags(values: list[str]) -> list[str]:
    """``--tag`` values, each checked before anything is sent (:func:`javia_core.models.check_tags`).

    Raises:
        ConfigError: a malformed tag (naming it and the expected form), or too many.
    """
    from javia_core.models import check_tags

    try:
        return check_tags(values)
    except ValueError as error:
        raise ConfigError(f"--tag: {error}") from None


def _prepare_activity(config: AgentConfig, app_group: str | None) -> int | None:
    """Give the application its activity directory; the app group's id, or None without one.

    The default directory ``<state_dir>/activity/`` is always prepared; a
    configured ``activity_file`` elsewhere only if its directory does not
    exist yet and is not one of the agent's own (state directory, install
    root, keyring, token file's directory); an existing directory of the
    operator's is left as it is.

    Raises:
        ConfigError: ``--app-group`` names a group that does not exist.
        OSError: the directory cannot be prepared (reported as one line).
    """
    from javia_agent.activity import DEFAULT_APP_GROUP, app_group_id, prepare_activity_dir

    name = app_group or DEFAULT_APP_GROUP
    gid = app_group_id(name)
    directory = config.paths.activity_file.parent
    if gid is None:
        if app_group is not None:
            raise ConfigError(
                f"group {app_group!r} does not exist: pass the group the application runs as "
                f"(the Group= or a SupplementaryGroups= of its unit), or create it with "
                f"groupadd --system {app_group}"
            )
        _console(stderr=True).print(
            f"[yellow]warning:[/yellow] group {name} does not exist, so the application cannot "
            f"record activity in {_escape(str(directory))} and urgent updates wait for the "
            f"maintenance window. Create it (groupadd --system {name}; javia-app.service adds "
            "it to the application with SupplementaryGroups=) and restart javia-agent, or "
            "register with --app-group GROUP.",
            highlight=False,
            soft_wrap=True,
        )
    # Never open a directory of the agent's own to the application (a custom
    # activity_file right in the state directory, say).
    own = {config.state_dir, config.install_root, config.keyring_dir, config.token_file.parent}
    if config.activity_file is None or not (directory.exists() or directory in own):
        prepare_activity_dir(directory, gid)
    return gid


def _load(config_path: Path | None) -> AgentConfig:
    """Load the configuration; a path given with ``--config`` (or its env) must exist.

    Only the built-in default ``/etc/javia/agent.toml`` may be missing (all
    defaults then apply): a mistyped explicit path would otherwise silently run
    with defaults and write under ``/var/lib/javia``.

    Raises:
        ConfigError: the explicit path does not exist, or the file is invalid.
    """
    _require_existing(config_path)
    return load_config(config_path)


def _require_existing(config_path: Path | None) -> None:
    if config_path is not None and not Path(config_path).exists():
        raise ConfigError(
            f"configuration {config_path} does not exist: pass the file 'javia agent register' "
            "wrote (default /etc/javia/agent.toml)"
        )


def _config_path(config_path: Path | None) -> Path:
    import os

    from javia_agent.config import DEFAULT_CONFIG_PATH

    return Path(config_path or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


@app.command()
@_friendly
def run(
    once: bool = typer.Option(False, "--once", help="Run one heartbeat cycle and exit."),
    config_path: Path | None = ConfigOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the agent: heartbeat, decide, install; until SIGTERM.

    With ``--once``: exit 1 if the update it attempted failed or was rolled back.
    Without, this process becomes the agent daemon once the configuration is
    loaded and checked (same process id; :mod:`javia_agent.daemon`).
    """
    setup_logging(verbose)
    config = _load(config_path)
    # Without a trusted key every update would fail: refuse to start instead.
    check_keyring_dir(config.keyring_dir)
    if not once:
        exec_daemon(config, verbose=verbose)
    from javia_agent.agent import Agent
    from javia_agent.installer import InstallResult

    agent = Agent.from_config(config)
    try:
        agent.start()
        result = agent.run_once()
    finally:
        agent.client.close()
    outcome = result.outcome
    line = f"heartbeat ok at {result.response.server_time.isoformat()}"
    if result.decision is not None:
        line += f"; {result.decision.reason}"
    if outcome is not None:
        line += f"; {outcome.version}: {outcome.result}"
        if outcome.reason:
            line += f" ({outcome.reason})"
    _console().print(line, highlight=False)
    if outcome is not None and outcome.result in (InstallResult.FAILED, InstallResult.ROLLED_BACK):
        raise typer.Exit(1)


@app.command()
@_friendly
def status(
    config_path: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the running version, update state, last heartbeat, pending update, and whether the device needs attention."""
    from javia_agent.agent import build_service
    from javia_agent.outbox import Outbox
    from javia_agent.state import StateStore

    config = _load(config_path)
    paths = config.paths
    state = StateStore(paths.state_file).load()
    try:
        current: str | None = Path(paths.current_link.readlink()).name
    except OSError:
        current = None
    try:
        heartbeat = json.loads(paths.heartbeat_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        heartbeat = None
    try:
        app_active: bool | None = build_service(config).is_active()
    except JaviaError:
        app_active = None
    body = {
        "device_uuid": str(config.device_uuid) if config.device_uuid else None,
        "server_url": config.server_url,
        "current_version": current,
        "committed_version": state.current_version,
        "app_active": app_active,
        "state": str(state.state),
        "update": state.update.model_dump(mode="json") if state.update else None,
        "failed_versions": state.failed_versions,
        "attention": state.attention,
        "queued_reports": len(Outbox(paths.outbox_dir)),
        "last_heartbeat": heartbeat,
    }
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    _print_status(body)


def _print_status(body: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("device", body["device_uuid"] or "not registered")
    table.add_row("server", body["server_url"] or "-")
    table.add_row("running version", body["current_version"] or "none")
    table.add_row(
        "application", {True: "active", False: "not running", None: "unknown"}[body["app_active"]]
    )
    update = body["update"]
    state = body["state"]
    if update:
        state += f" ({update['version']}, update {update['update_id']})"
    table.add_row("update state", state)
    if body.get("attention"):
        from rich.text import Text

        table.add_row("NEEDS ATTENTION", Text(body["attention"], style="bold red"))
    heartbeat = body["last_heartbeat"]
    if heartbeat:
        table.add_row(
            "last heartbeat", f"{heartbeat['received_at']} (server time {heartbeat['server_time']})"
        )
        pending = heartbeat.get("update")
        decision = heartbeat.get("decision")
        if pending:
            text = f"{pending['version']} ({pending['update_type']})"
            if decision:
                text += f": {decision['reason']}"
            table.add_row("pending update", text)
        else:
            table.add_row("pending update", "none")
    else:
        table.add_row("last heartbeat", "never")
    if body["failed_versions"]:
        table.add_row("failed versions", ", ".join(body["failed_versions"]))
    table.add_row("queued reports", str(body["queued_reports"]))
    _console().print(table)


@app.command()
@_friendly
def activity(
    file: Path | None = typer.Option(
        None,
        "--file",
        help="Activity file (default $JAVIA_ACTIVITY_FILE, else from the configuration).",
    ),
    config_path: Path | None = ConfigOption,
) -> None:
    """Record that the application was just used (urgent updates wait for idle time)."""
    import os

    from javia_agent.activity import ACTIVITY_FILE_ENV, record_activity

    _require_existing(config_path)
    if file is None and not os.environ.get(ACTIVITY_FILE_ENV):
        file = load_config(config_path).paths.activity_file
    record_activity(file)


@app.command()
@_friendly
def verify(
    package_dir: Path = typer.Argument(
        ..., help="Directory with manifest.json, manifest.sig, payload.tar.gz."
    ),
    keyring: Path | None = typer.Option(
        None, "--keyring", help="Directory of trusted *.pub keys (default: the configured keyring)."
    ),
    current_version: str | None = typer.Option(
        None,
        "--current-version",
        help="Refuse versions not newer than this vX.Y.Z (default: the release the device runs).",
    ),
    config_path: Path | None = ConfigOption,
) -> None:
    """Run every check installation runs, short of writing; exit 0 if accepted, 1 if not."""
    from javia_agent.verification import verify_package_dir
    from javia_core.keys import load_keyring
    from javia_core.versioning import Version

    config = _load(config_path)
    if keyring is None:
        keyring = config.keyring_dir
    check_keyring_dir(keyring)
    if current_version:
        floor: Version | None = Version.parse(current_version)
    else:
        # What `javia agent install` would compare against: the running release.
        try:
            running = Path(config.paths.current_link.readlink()).name
        except OSError:
            running = None
        floor = Version.parse(running) if running and Version.is_valid(running) else None
    verified = verify_package_dir(package_dir, load_keyring(keyring), current_version=floor)
    manifest = verified.manifest
    _console().print(
        f"accepted: {manifest.app} {manifest.version} ({manifest.update_type}), "
        f"signed by key {verified.key_id}, {len(manifest.files)} files, {manifest.unpacked_size} bytes",
        highlight=False,
    )


@app.command()
@_friendly
def install(
    package_dir: Path = typer.Argument(
        ..., help="Directory with manifest.json, manifest.sig, payload.tar.gz."
    ),
    config_path: Path | None = ConfigOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each step."),
) -> None:
    """Install a package directory (USB stick, field service) as a network update would."""
    from javia_agent.agent import build_service
    from javia_agent.installer import Installer, InstallResult

    if verbose:
        setup_logging(True)
    config: AgentConfig = _load(config_path)
    installer = Installer.from_config(config, build_service(config))
    outcome = installer.install_from_directory(package_dir)
    if outcome.result != InstallResult.COMPLETED:
        _fail(_escape(f"{outcome.version} {outcome.result}: {outcome.reason}"))
    _console().print(f"installed {outcome.version}; it is running", highlight=False)
