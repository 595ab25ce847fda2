"""The reference server of the heartbeat benchmark: a bare FastAPI app.

One ``async def`` route at the heartbeat's path that ignores its input and
returns a fixed JSON body, served by uvicorn with the same settings as
``javia server`` (:func:`javia_updates.server.run`: one process, uvicorn's
default event loop and HTTP parser, info log level with access log, no
``Server`` header). It is what "as fast as this stack can answer" means here.

Run alone: ``python bench/reference_app.py --port 8100``.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

FIXED_BODY = {
    "server_time": "2025-01-01T00:00:00Z",
    "heartbeat_interval_seconds": 300,
    "update": None,
}

app = FastAPI(title="reference")


@app.post("/api/v1/devices/{device_uuid}/heartbeat")
async def heartbeat(device_uuid: str) -> dict:
    """Answer every heartbeat with the same body."""
    return FIXED_BODY


@app.get("/api/v1/health")
async def health() -> dict:
    """Liveness, for start-up polling."""
    return {"status": "ok"}


def main() -> None:
    """Serve on 127.0.0.1 with javia's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="info", server_header=False
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
