"""The HTTP server (FastAPI on uvicorn): ``create_app`` and ``run``.

Needs the ``javia[server]`` extra.
"""

from __future__ import annotations

import errno
import logging
import socket

from javia_updates.metrics import prepare_metrics_directory
from javia_updates.server.app import create_app
from javia_updates.settings import ServerSettings, SettingsError

__all__ = ["check_port_free", "create_app", "run", "warn_if_signatures_unchecked"]


def check_port_free(host: str, port: int) -> None:
    """Check that ``host``:``port`` can be listened on, before starting uvicorn.

    Binds and closes a socket with ``SO_REUSEADDR`` (as uvicorn does), so a
    port only in TIME_WAIT counts as free. Another process may still take the
    port in between; this turns the common case into one clear line.

    Raises:
        SettingsError: the port is in use, or ``host`` is not an address of
            this machine.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SettingsError(
            f"cannot listen on {host}: {error.strerror}; expected an address or host name of this machine"
        ) from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"port {port} on {host} is already in use: stop the other server or pass --port"
                ) from None
            raise SettingsError(f"cannot listen on {host} port {port}: {error.strerror}") from None


def warn_if_signatures_unchecked(settings: ServerSettings) -> bool:
    """Log one warning when publish cannot check signatures (no ``trusted_keys_dir``).

    The server is not the trust anchor (the agent verifies every package
    against its own keyring), so it still accepts such packages; the warning
    says how to make publish refuse a bad signature early.

    Returns:
        Whether the warning was logged.
    """
    if settings.trusted_keys_dir is not None:
        return False
    logging.getLogger("javia_updates.server").warning(
        "publish cannot check signatures early: no trusted keys configured; set "
        "JAVIA_TRUSTED_KEYS_DIR (or trusted_keys_dir in the settings file) to a directory "
        "of the publishers' *.pub keys (devices still verify every package themselves)"
    )
    return True


def run(
    settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve the API with uvicorn until interrupted.

    ``settings.workers`` (default: one per CPU core, :meth:`ServerSettings.resolved_workers`)
    processes serve; with more than one, :func:`javia_updates.server.workers.run_workers`
    supervises them. Builds the app (or, with workers, prepares the backend)
    first, so a missing API key or an unusable database stops the start with
    one clear error, then logs one line with the URL.

    Args:
        settings: server settings.
        host: address to listen on (default loopback only).
        port: TCP port.
        log_level: uvicorn's log level.

    Raises:
        SettingsError: no admin API key is configured, or the port is in use.
        BackendError: storage cannot be opened or migrated, or a worker failed to start.
    """
    import uvicorn

    check_port_free(host, port)
    # Before the app (and any worker) creates a metric: counts from every
    # worker process add up in this server start's own directory.
    prepare_metrics_directory()
    workers = settings.resolved_workers()
    shown = f"[{host}]" if ":" in host else host
    line = "javia server %s at http://%s:%d (API /api/v1, docs /docs, dashboard /dashboard/, data %s, %d worker%s)"
    arguments = (shown, port, settings.data_dir.absolute(), workers, "" if workers == 1 else "s")
    if workers > 1:
        from javia_updates import __version__
        from javia_updates.server.workers import run_workers

        settings.require_api_key()
        run_workers(
            settings,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            banner=line % (__version__, *arguments),
        )
        return
    app = create_app(settings)
    warn_if_signatures_unchecked(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=settings.access_log,
        server_header=False,
    )
    logging.getLogger("uvicorn.error").info(line, app.version, *arguments)
    uvicorn.Server(config).run()
