"""``javia devices``: the fleet as the server sees it."""

from __future__ import annotations

import typer
from rich.table import Table

from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    ServerOption,
    admin_client,
    ago,
    console,
    friendly_errors,
    print_json,
)

app = typer.Typer(help="List and inspect devices.", no_args_is_help=True)

STATUS_STYLE = {"online": "green", "offline": "red", "updating": "yellow"}


@app.command("list")
def list_devices(
    status: str | None = typer.Option(None, "--status", help="online, offline or updating."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One line per device: name, version, status, last heartbeat, timezone."""
    with friendly_errors(), admin_client(server, api_key) as client:
        devices = client.list_devices(status=status)
    if as_json:
        print_json(devices)
        return
    table = Table(title=f"{len(devices)} device(s)", title_justify="left")
    for column in ("device", "uuid", "version", "status", "last seen", "timezone", "model"):
        table.add_column(column)
    for device in devices:
        style = STATUS_STYLE.get(device["status"], "")
        table.add_row(
            device.get("device_name") or "—",
            str(device["device_uuid"]),
            device.get("current_version") or "—",
            f"[{style}]{device['status']}[/{style}]" if style else device["status"],
            ago(device.get("last_seen")),
            device.get("timezone", "UTC"),
            str((device.get("metadata") or {}).get("hardware_model") or "—"),
        )
    console.print(table)


@app.command("show")
def show_device(
    device_uuid: str = typer.Argument(..., help="The device's uuid."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Everything about one device, with its update history."""
    with friendly_errors(), admin_client(server, api_key) as client:
        device = client.get_device(device_uuid)
        history = client.device_history(device_uuid)
    if as_json:
        print_json({"device": device, "updates": history})
        return
    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    for key in ("device_name", "device_uuid", "current_version", "status", "timezone"):
        details.add_row(key.replace("_", " "), str(device.get(key) or "—"))
    details.add_row("last seen", f"{device.get('last_seen') or '—'} ({ago(device.get('last_seen'))})")
    details.add_row("registered", str(device.get("registered_at")))
    for key, value in sorted((device.get("metadata") or {}).items()):
        details.add_row(key.replace("_", " "), str(value))
    console.print(details)
    if history:
        table = Table(title="updates", title_justify="left")
        for column in ("version", "status", "scheduled for (UTC)", "completed", "error"):
            table.add_column(column)
        for row in history:
            table.add_row(
                row["version"],
                row["status"],
                str(row.get("scheduled_for") or "—"),
                str(row.get("completed_at") or "—"),
                row.get("error_message") or "",
            )
        console.print(table)
