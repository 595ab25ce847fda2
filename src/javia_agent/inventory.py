"""The device's inventory, sent with every heartbeat (DESIGN.md section 6).

Read from local files only (the device tree, os-release, the file system),
never looked up elsewhere: :func:`device_metadata`, and the agent's own
version (:func:`agent_version`).
"""

from __future__ import annotations

import functools
import platform
import shutil
import socket
from pathlib import Path
from typing import Any

__all__ = ["agent_version", "device_metadata"]


@functools.cache
def agent_version() -> str:
    """The installed javia distribution's version, or ``unknown`` (read once per process)."""
    try:
        from importlib.metadata import version

        return version("javia")
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


def _read_text(path: Path, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _os_pretty_name(os_release: Path) -> str | None:
    text = _read_text(os_release)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"').strip("'") or None
    return None


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def device_metadata(
    install_root: Path,
    *,
    ip_address: str | None,
    model_file: Path = Path("/proc/device-tree/model"),
    os_release: Path = Path("/etc/os-release"),
) -> dict[str, Any]:
    """The inventory sent with each heartbeat. No external lookups.

    Returns:
        ``hardware_model`` (from the device tree, on a Pi), ``os_version``
        (``PRETTY_NAME`` of os-release), ``python_version``, ``ip_address``
        (the local address of the connection to the server), ``hostname``,
        ``free_disk_bytes`` of the file system holding ``install_root`` and
        ``agent_version``. Unknown values are left out.
    """
    model = _read_text(model_file)
    values: dict[str, Any] = {
        "hardware_model": model.strip("\x00\n ") if model else None,
        "os_version": _os_pretty_name(os_release),
        "python_version": platform.python_version(),
        "ip_address": ip_address,
        "hostname": socket.gethostname(),
        "free_disk_bytes": _free_bytes(Path(install_root)),
        "agent_version": agent_version(),
    }
    return {key: value for key, value in values.items() if value is not None}
