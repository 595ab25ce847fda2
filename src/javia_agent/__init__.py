"""The javia agent: runs on every Raspberry Pi (DESIGN.md section 7).

Heartbeats to the javia server, decides when to install with the shared
policy (:mod:`javia_core.scheduling`), installs releases atomically with a
health check and rollback, and keeps its progress in a crash-safe state file.
Imports only what a Pi Zero 2 W can afford: httpx, cryptography, pydantic,
pydantic-settings, typer, rich and tomli-w — never the server's dependencies.
"""

from javia_agent.activity import record_activity

__all__ = ["record_activity"]
