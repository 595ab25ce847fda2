"""Settings of the update server (DESIGN.md sections 4, 5 and 6).

Values come, highest priority first, from keyword arguments, the environment
(``JAVIA_*``, e.g. ``JAVIA_API_KEY``, ``JAVIA_DATA_DIR``) and a TOML file whose
path is ``JAVIA_CONFIG`` (default ``~/.config/javia/server.toml``; a missing
file is simply not read). Durations are in seconds, sizes in bytes, the window
start is a device-local wall-clock time.

Example ``server.toml``::

    api_key = "<output of python3 -c 'import secrets; print(secrets.token_urlsafe(32))'>"
    data_dir = "/var/lib/javia-server"
    window_start = "02:00:00"
    window_seconds = 10800
"""

from __future__ import annotations

import os
from datetime import time
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from javia_core.errors import JaviaError
from javia_core.models import UpdateType
from javia_core.rollouts import parse_approval_required
from javia_core.scheduling import MAX_WINDOW_SECONDS
from javia_core.settings_sources import EnvOverTomlSettings
from javia_updates.secret_rules import SECRET_FORM, is_secret_form

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MIN_API_KEY_LENGTH",
    "ServerSettings",
    "SettingsError",
    "available_cores",
    "config_path",
    "load_server_settings",
]

DEFAULT_CONFIG_PATH = Path("~/.config/javia/server.toml")
GIB = 1024**3
MIB = 1024**2
#: Shortest admin API key (and metrics token, dashboard secret) accepted at start-up, in characters.
MIN_API_KEY_LENGTH = 16


class SettingsError(JaviaError):
    """The server's settings are incomplete or inconsistent (e.g. no admin API key)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def config_path() -> Path:
    """The settings file: ``$JAVIA_CONFIG`` or ``~/.config/javia/server.toml``."""
    return Path(os.environ.get("JAVIA_CONFIG") or DEFAULT_CONFIG_PATH).expanduser()


class ServerSettings(EnvOverTomlSettings):
    """Everything the server needs to run, with documented units.

    Attributes:
        api_key: the admin API key (``X-API-Key``); the server refuses to start
            without one, or with one shorter than 16 characters
            (:meth:`require_api_key`).
        backend: storage backend name (DESIGN.md section 5); ``local`` is
            SQLite + files under ``data_dir``.
        data_dir: database (by default) and package files.
        database_url: SQLAlchemy URL; None means ``sqlite:///<data_dir>/javia.db``.
        heartbeat_interval_seconds: the poll interval the server tells devices
            (fractions only for demos and tests; the wire carries whole seconds,
            rounded up); a device silent for more than 3 intervals is ``offline``.
        window_start: device-local start of the maintenance window (02:00).
        window_seconds: maintenance window length in seconds (3 h).
        urgent_idle_seconds: idle time before an urgent update installs (1 h).
        instant_online_seconds: an instant update reaches, at publish, devices
            seen within this many seconds (inclusive; DESIGN.md section 4).
        max_upload_bytes: largest accepted publish request body, in bytes
            (413 beyond, the message names the limit).
        max_request_body_bytes: largest accepted body of every other request,
            in bytes (JSON bodies; 413 beyond). The default holds a dry-run plan
            for 100,000 target uuids.
        heartbeat_burst: heartbeats one device may send in a burst; the bucket
            refills at ``heartbeat_burst`` per heartbeat interval, so a device
            heartbeating far faster than told gets 429 with ``Retry-After``.
            0 turns the limit off. Each server process (replica) keeps its own
            count in memory.
        heartbeat_flush_seconds: heartbeats' soft state (``last_seen``, the
            reported version, status and metadata) is written in one batch this
            often, in seconds; a crash loses at most this much of it, which the
            devices send again at their next heartbeat. 0 writes every heartbeat
            in its own transaction before answering.
        device_cache_seconds: how long the server keeps a device (looked up by
            its token) and its update rows in memory, in seconds. Changes made
            through this server process take effect at once; changes made
            elsewhere (another replica, a script on the database) after at most
            this long, except a revoked or rotated token, which every replica
            refuses at once (on PostgreSQL each device request confirms its
            token in the database). 0 turns this cache off. (The list of published updates
            is checked at least every second either way.)
        trusted_keys_dir: if set, a keyring directory of ``*.pub`` files; publish
            then verifies the signature on the server too and refuses (400) a
            package whose signature does not verify against those keys. If
            unset, the server is not a trust anchor: it stores packages whose
            signature it cannot check (only its form), and logs one warning at
            start-up; the agent's own check against its keyring is what
            enforces trust either way. Set ``JAVIA_TRUSTED_KEYS_DIR`` (or
            ``trusted_keys_dir`` in the settings file) to the directory of the
            publishers' public keys to refuse bad signatures early.
        approval_required: update types whose rollouts start awaiting the
            operator's ``approve`` (``JAVIA_APPROVAL_REQUIRED``, e.g. ``instant``
            or ``instant,urgent``; empty: none). See :attr:`approval_required_types`.
        rollout_evaluation_seconds: how often the server evaluates running
            rollouts for soaks, silent devices and phase gates, in seconds
            (status reports and regressions evaluate at once as well).
        workers: server processes (``javia server --workers``, ``JAVIA_WORKERS``)
            sharing the listening socket, 1 to 256; None: one per CPU core this
            process may run on (:meth:`resolved_workers`). Each keeps its own
            caches; docs/architecture.md ("Processes") says what stays
            consistent across them.
        dashboard_secret: the secret signing dashboard sessions
            (``JAVIA_DASHBOARD_SECRET``), the same on every replica. None:
            with the ``local`` backend a random one kept in the data
            directory (``dashboard-session.key``); with ``supabase`` the
            admin key alone signs them (docs/dashboard.md).
        metrics_token: a read-only bearer token for ``GET /metrics``
            (``JAVIA_METRICS_TOKEN``; the admin key works too), so a Prometheus
            server need not hold the admin key (docs/metrics.md). None: only
            the admin key reads metrics.
        webhook_timeout_seconds: one delivery attempt's whole deadline
            (connect, send, answer), in seconds; a delivery is leased to one
            process for twice this and a second (docs/webhooks.md).
        webhook_retry_seconds: the wait before the first retry, in seconds;
            it doubles with every failed attempt up to
            ``webhook_retry_max_seconds``.
        webhook_give_up_seconds: a delivery not delivered this long after its
            event is given up (``failed``), in seconds (one day).
        webhook_poll_seconds: how often the delivery task looks for due
            deliveries when it found none, in seconds.
        wakeup_hold_seconds: the longest a device's wake-up request is held
            before it is answered ``idle``, in seconds (docs/agent.md, "The
            wake-up channel"); keep it under the idle timeout of any proxy in front
            (and above a few seconds: every answer costs a reconnect).
        wakeup_admissions_per_second: new held wake-up requests admitted per
            second by each server process (503 with ``Retry-After`` beyond), so
            a fleet reconnecting after a restart comes back over seconds; 0: no limit.
        wakeup_reconnect_seconds: the reconnect delay the server suggests after
            each answer, in seconds (the agent adds jitter).
        max_concurrent_downloads: package downloads (archive, per-file objects,
            patches) the server streams at once; one more is answered 503
            with ``Retry-After``. 0 turns the cap off. With ``--workers N``
            each worker admits ``ceil(cap / N)``; each replica behind a
            balancer admits its own number (docs/backends.md).
        download_busy_retry_seconds: the ``Retry-After`` of such a 503, in
            seconds (devices add jitter).
        install_admission_requests: more requests than this in progress in a
            server process (not counting package downloads and held wake-up
            requests) make it *busy*: the pace at which devices may begin
            installs is halved; a device refused gets no directive in that
            heartbeat answer and is offered it at a later one
            (:mod:`javia_updates.service.admission`). Per worker. 0 turns
            install admission off.
        install_admission_loop_lag_seconds: the mean lag of a server
            process's event loop above which it is *busy* (short of CPU),
            seconds.
        access_log: log one line per HTTP request (uvicorn's access log). Off
            by default: a fleet's heartbeats would be most of the log (10,000
            devices: 2.9 million lines a day) and writing them cost the
            server about 6 % of its CPU in the 10,000-device simulation;
            javia logs state changes, refusals and errors itself.
    """

    model_config = SettingsConfigDict(env_prefix="JAVIA_", extra="ignore")

    api_key: SecretStr | None = None
    backend: str = "local"
    data_dir: Path = Path("./javia-data")
    database_url: str | None = None
    heartbeat_interval_seconds: float = Field(default=300, gt=0, le=86_400)
    window_start: time = time(2, 0)
    window_seconds: int = Field(default=10_800, ge=1, le=MAX_WINDOW_SECONDS)
    urgent_idle_seconds: int = Field(default=3600, ge=0, le=7 * 86_400)
    instant_online_seconds: int = Field(default=300, ge=0, le=86_400)
    max_upload_bytes: int = Field(default=2 * GIB, ge=1024)
    max_request_body_bytes: int = Field(default=8 * MIB, ge=1024)
    heartbeat_burst: int = Field(default=10, ge=0, le=1_000_000)
    heartbeat_flush_seconds: float = Field(default=0.25, ge=0, le=60)
    device_cache_seconds: float = Field(default=30, ge=0, le=3600)
    trusted_keys_dir: Path | None = None
    approval_required: str = ""
    rollout_evaluation_seconds: float = Field(default=5, gt=0, le=3600)
    workers: int | None = Field(default=None, ge=1, le=256)
    metrics_token: SecretStr | None = None
    dashboard_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=120)
    webhook_retry_seconds: float = Field(default=10, gt=0, le=86_400)
    webhook_retry_max_seconds: float = Field(default=3600, gt=0, le=86_400)
    webhook_give_up_seconds: float = Field(default=86_400, gt=0, le=30 * 86_400)
    webhook_poll_seconds: float = Field(default=1, gt=0, le=60)
    wakeup_hold_seconds: float = Field(default=50, gt=0, le=600)
    wakeup_admissions_per_second: float = Field(default=500, ge=0, le=1_000_000)
    wakeup_reconnect_seconds: float = Field(default=1, ge=0, le=3600)
    max_concurrent_downloads: int = Field(default=200, ge=0, le=1_000_000)
    download_busy_retry_seconds: int = Field(default=15, ge=1, le=3600)
    install_admission_requests: int = Field(default=16, ge=0, le=1_000_000)
    install_admission_loop_lag_seconds: float = Field(default=0.05, gt=0, le=60)
    access_log: bool = False

    @field_validator("approval_required")
    @classmethod
    def _approval_types(cls, value: str) -> str:
        parse_approval_required(value)  # RolloutError is a ValueError: a clear settings error
        return value

    @property
    def approval_required_types(self) -> frozenset[UpdateType]:
        """The update types of :attr:`approval_required`, parsed (docs/rollouts.md)."""
        return parse_approval_required(self.approval_required)

    @field_validator("window_start")
    @classmethod
    def _naive_window_start(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError(
                "window_start is a device-local wall-clock time such as 02:00, without offset"
            )
        return value

    @classmethod
    def toml_config_path(cls) -> Path:
        """The server's settings file, :func:`config_path`."""
        return config_path()

    def resolved_workers(self) -> int:
        """Server processes to run: :attr:`workers`, or the CPU cores this process may use."""
        return self.workers if self.workers is not None else available_cores()

    def resolved_database_url(self) -> str:
        """The database URL: ``database_url``, or the SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'javia.db').expanduser().absolute()}"

    def require_api_key(self) -> str:
        """The admin API key, once every secret of the settings is long enough.

        Called at every server start, before anything listens: a short
        ``metrics_token`` or ``dashboard_secret`` is refused as a short admin
        key is (blank counts as unset).

        Raises:
            SettingsError: no key is configured, or it, or a ``metrics_token``
                or ``dashboard_secret`` that is set, is shorter than
                :data:`MIN_API_KEY_LENGTH` (16) characters or not printable
                ASCII without spaces (:mod:`javia_updates.secret_rules`: no
                request could match it); the message names the setting, never
                its value, and says how to generate one.
        """
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if not key.strip():
            raise SettingsError("no admin API key configured" + _how_to_set("api_key"))
        for name, label, secret in (
            ("api_key", "the admin API key", self.api_key),
            ("metrics_token", "the metrics token", self.metrics_token),
            ("dashboard_secret", "the dashboard secret", self.dashboard_secret),
        ):
            value = secret.get_secret_value() if secret is not None else ""
            if value.strip() and not is_secret_form(value):
                raise SettingsError(f"{label} must be {SECRET_FORM}" + _how_to_set(name))
            length = len(value.strip())
            if 0 < length < MIN_API_KEY_LENGTH:
                raise SettingsError(
                    f"{label} is {length} characters: at least {MIN_API_KEY_LENGTH} are required"
                    + _how_to_set(name)
                )
        return key


def _how_to_set(name: str) -> str:
    """``: set JAVIA_NAME (or name in the settings file) to a long random secret, e.g. ...``."""
    return (
        f": set JAVIA_{name.upper()} (or {name} in {config_path()}) to a long random secret, "
        "e.g. the output of `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
    )


#: The expected form of settings whose pydantic message alone would not say it.
_EXPECTED_FORMS = {
    "window_start": "a device-local wall-clock time HH:MM (00:00 to 23:59), e.g. 02:00",
    "data_dir": "a directory path",
    "trusted_keys_dir": "a directory path of *.pub keys",
}


def _describe_invalid(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        field = ".".join(str(part) for part in item.get("loc", ())) or "settings"
        name = field.split(".")[0]
        shown = repr(item.get("input"))
        if len(shown) > 40:
            shown = shown[:40] + "…"
        expected = _EXPECTED_FORMS.get(name)
        wanted = f"expected {expected}" if expected else str(item.get("msg", "invalid")).lower()
        problems.append(
            f"invalid setting {field} (JAVIA_{name.upper()} or {name} in {config_path()}): "
            f"got {shown}: {wanted}"
        )
    return "; ".join(problems)


def load_server_settings(**overrides: object) -> ServerSettings:
    """Build :class:`ServerSettings` from ``overrides``, the environment and the file.

    Args:
        overrides: keyword arguments of :class:`ServerSettings` (highest priority).

    Returns:
        The settings.

    Raises:
        SettingsError: a value is invalid; the message names the setting, its
            environment variable, the value given and the expected form (instead
            of pydantic's multi-line ``ValidationError``).
    """
    try:
        return ServerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_describe_invalid(error)) from None
