"""``javia updates``: published updates, their progress and their plan."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    ServerOption,
    admin_client,
    console,
    friendly_errors,
    parse_time,
    print_json,
)

app = typer.Typer(help="List, inspect and plan updates.", no_args_is_help=True)

STATUS_ORDER = (
    "pending",
    "downloading",
    "installing",
    "completed",
    "failed",
    "rolled_back",
    "superseded",
    "cancelled",
)


def _human_size(size: int) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _counts(update: dict) -> str:
    counts = update.get("status_counts") or {}
    parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if counts.get(s)]
    return ", ".join(parts) or "no devices yet"


@app.command("list")
def list_updates(
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Published updates, newest first, with per-status device counts."""
    with friendly_errors(), admin_client(server, api_key) as client:
        updates = client.list_updates()
    if as_json:
        print_json(updates)
        return
    table = Table(title=f"{len(updates)} update(s)", title_justify="left")
    for column in ("id", "version", "type", "published (UTC)", "size", "devices", "description"):
        table.add_column(column)
    for update in updates:
        table.add_row(
            str(update["id"]),
            update["version"],
            update["update_type"],
            str(update["created_at"])[:19],
            _human_size(update.get("size", 0)),
            _counts(update),
            update.get("description", ""),
        )
    console.print(table)


@app.command("show")
def show_update(
    update: str = typer.Argument(..., help="Update id or version (vX.Y.Z)."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One update and every targeted device's progress."""
    with friendly_errors(), admin_client(server, api_key) as client:
        info = client.get_update(update)
        rows = client.update_devices(info["id"])
    if as_json:
        print_json({"update": info, "devices": rows})
        return
    console.print(
        f"[bold]{info['version']}[/bold] ({info['update_type']}), update {info['id']}, "
        f"key {info.get('key_id', '?')}: {info.get('description', '')}"
    )
    if info.get("system_packages"):
        console.print("system packages: " + ", ".join(info["system_packages"]))
    console.print(_counts(info))
    console.print(progress_table(rows))


def progress_table(rows: list[dict], title: str = "devices") -> Table:
    """A rich table of per-device progress rows (``models.DeviceUpdateOut`` JSON)."""
    table = Table(title=title, title_justify="left")
    for column in ("device", "status", "scheduled for (UTC)", "started", "completed", "error"):
        table.add_column(column)
    style = {"completed": "green", "failed": "red", "rolled_back": "red", "pending": "dim"}
    for row in rows:
        status = row["status"]
        colour = style.get(status, "yellow")
        table.add_row(
            row.get("device_name") or str(row["device_uuid"]),
            f"[{colour}]{status}[/{colour}]",
            str(row.get("scheduled_for") or "—")[:19],
            str(row.get("started_at") or "—")[11:19],
            str(row.get("completed_at") or "—")[11:19],
            row.get("error_message") or "",
        )
    return table


def plan_table(plans: list[dict], title: str) -> Table:
    """A rich table of a rollout plan: who gets the update, when (local and UTC), why."""
    table = Table(title=title, title_justify="left")
    for column in ("device", "timezone", "gets it", "installs (device-local)", "installs (UTC)", "why"):
        table.add_column(column)
    for plan in plans:
        at_utc = parse_time(plan.get("install_at_utc"))
        tz = plan.get("timezone") or "UTC"
        local = "—"
        if at_utc is not None:
            local_time: datetime = at_utc.astimezone(ZoneInfo(tz))
            local = local_time.strftime("%a %Y-%m-%d %H:%M %Z")
        table.add_row(
            plan.get("device_name") or str(plan["device_uuid"]),
            tz,
            "[green]yes[/green]" if plan.get("gets_row") else "[dim]not now[/dim]",
            local,
            at_utc.strftime("%Y-%m-%d %H:%M") if at_utc else "—",
            plan.get("reason", ""),
        )
    return table


@app.command("plan")
def plan_update(
    update: str = typer.Argument(..., help="Update id or version (vX.Y.Z)."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """For each targeted device: whether it gets the update, when, and why."""
    with friendly_errors(), admin_client(server, api_key) as client:
        plans = client.plan_update(update)
    if as_json:
        print_json(plans)
        return
    console.print(plan_table(plans, f"plan for {update}"))
