"""The HTTP server (FastAPI on uvicorn): ``create_app`` and ``run``.

Needs the ``javia[server]`` extra.
"""

from __future__ import annotations

import logging

from javia_updates.server.app import create_app
from javia_updates.settings import ServerSettings

__all__ = ["create_app", "run"]


def run(
    settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve the API with uvicorn until interrupted.

    Builds the app first (so a missing API key or an unusable database stops
    the start with one clear error), then logs one line with the URL.

    Args:
        settings: server settings.
        host: address to listen on (default loopback only).
        port: TCP port.
        log_level: uvicorn's log level.

    Raises:
        SettingsError: no admin API key is configured.
        BackendError: storage cannot be opened or migrated.
    """
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False)
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info(
        "javia server %s at http://%s:%d (API /api/v1, docs /docs, data %s)",
        app.version,
        shown,
        port,
        settings.data_dir.absolute(),
    )
    uvicorn.Server(config).run()
