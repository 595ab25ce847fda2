"""``javia demo``: the whole update loop on this machine, in under a minute.

Starts a server on 127.0.0.1 with a fresh data directory, three devices in three
timezones (each with its own agent process and its own application process),
publishes an instant update of the bundled example application, follows every
device in a live table until it runs the new version, shows how a scheduled and
an urgent update would be planned for the same devices, and prints a summary.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer
from rich.live import Live
from rich.table import Table

from javia_core.models import DeviceUpdateOut, UpdateStatus
from javia_updates.cli.common import SafeTable, cell, console, fail, markup_safe, wire_time

if TYPE_CHECKING:
    from javia_devtools.demo import LocalFleet

DEVICES = (
    ("living-room", "America/New_York"),
    ("kitchen", "Europe/Berlin"),
    ("studio", "Asia/Kolkata"),
)


def _table(
    fleet: LocalFleet, rows_by_uuid: dict[str, DeviceUpdateOut], target: str, started: float
) -> Table:
    table = SafeTable(
        title=f"instant update {target}: {time.monotonic() - started:4.1f} s",
        title_justify="left",
    )
    for column in ("device", "timezone", "local time", "server status", "app version", "app pid"):
        table.add_column(column)
    now = datetime.now(UTC)
    for device in fleet.devices:
        row = rows_by_uuid.get(device.device_uuid)
        status = row.status.value if row is not None else "waiting for heartbeat"
        colour = {"completed": "green", "failed": "red", "rolled_back": "red"}.get(status, "yellow")
        app = device.app_status() or {}
        version = str(app.get("version", "—"))
        table.add_row(
            device.name,
            device.timezone,
            now.astimezone(ZoneInfo(device.timezone)).strftime("%H:%M:%S"),
            cell(status, colour),
            cell(version, "green" if version == target else ""),
            str(app.get("pid", "—")),
        )
    return table


def demo(
    directory: Path | None = typer.Option(
        None,
        "--dir",
        help="Keep everything in this directory (default: a temporary one, removed after).",
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for every device."),
) -> None:
    """Run a server, three devices and an instant update, all on this machine."""
    from javia_core.errors import JaviaError
    from javia_devtools.demo import LocalFleet, example_app_dir
    from javia_updates.cli.updates import plan_table

    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            fail(f"{directory} is not empty: the demo needs an empty directory")
        root, cleanup = directory, False
    else:
        root, cleanup = Path(tempfile.mkdtemp(prefix="javia-demo-")), True
    fleet = LocalFleet(root)
    started = time.monotonic()
    ok = False
    try:
        console.rule("[bold]javia demo")
        app_dir = root / "pi_client"
        shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        fleet.generate_key()
        console.print(
            f"signing key {markup_safe(fleet.private_key_path)} (public key copied to every device)"
        )
        fleet.start_server()
        console.print(
            f"server      {markup_safe(fleet.url)}  (data in {markup_safe(root / 'server')})"
        )
        initial = fleet.build_package(app_dir, "v1.0.0", "scheduled", root / "packages" / "v1.0.0")
        for name, tz in DEVICES:
            device = fleet.add_device(name, tz, initial_package=initial)
            fleet.start_agent(device)
            app = device.app_status() or {}
            console.print(
                f"device      {name:<12} {tz:<17} registered as {markup_safe(device.device_uuid)}, "
                f"running {markup_safe(app.get('version', '?'))} (pid {markup_safe(app.get('pid', '?'))})"
            )
        before = {device.name: device.app_status() or {} for device in fleet.devices}
        _wait_online(fleet, timeout=15)

        (app_dir / "app.py").write_text(
            (app_dir / "app.py")
            .read_text(encoding="utf-8")
            .replace("listening", "listening, now with faster wake-word detection"),
            encoding="utf-8",
        )
        console.print(
            "\n[bold]javia publish ./pi_client --version v1.1.0 --type instant --yes[/bold]"
        )
        update = fleet.publish(app_dir, "v1.1.0", "instant", "Faster wake-word detection")
        target = update.version
        client = fleet.client()
        deadline = time.monotonic() + timeout
        rows: dict[str, DeviceUpdateOut] = {}
        publish_started = time.monotonic()
        with Live(
            _table(fleet, rows, target, publish_started), console=console, refresh_per_second=4
        ) as live:
            while time.monotonic() < deadline:
                rows = {str(r.device_uuid): r for r in client.update_devices(update.id)}
                live.update(_table(fleet, rows, target, publish_started))
                done = [
                    (row := rows.get(d.device_uuid)) is not None
                    and row.status is UpdateStatus.COMPLETED
                    and (d.app_status() or {}).get("version") == target
                    for d in fleet.devices
                ]
                failed = [
                    r
                    for r in rows.values()
                    if r.status in (UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK)
                ]
                if all(done) or failed:
                    break
                time.sleep(0.25)
        if not all(done):
            detail = "; ".join(
                f"{r.device_name}: {r.status.value} {r.error_message or ''}" for r in rows.values()
            )
            fail(
                f"not every device reached {target} within {timeout:.0f} s ({detail}); logs in {root}"
            )

        console.print(
            "\n[bold]How the next updates would be planned[/bold] (javia publish --dry-run):"
        )
        for kind in ("scheduled", "urgent"):
            plans = client.plan_new_update(update_type=kind, version="v1.2.0")
            console.print(plan_table(plans, f"{kind} update v1.2.0"))

        summary = SafeTable(title="summary", title_justify="left")
        for column in ("device", "before", "after", "app restarted", "installed at (UTC)"):
            summary.add_column(column)
        for device in fleet.devices:
            after = device.app_status() or {}
            old = before[device.name]
            summary.add_row(
                device.name,
                f"{old.get('version')} (pid {old.get('pid')})",
                f"{after.get('version')} (pid {after.get('pid')})",
                cell("yes") if after.get("pid") != old.get("pid") else cell("no", "red"),
                str(wire_time(rows[device.device_uuid].completed_at))[:19],
            )
        console.print(summary)
        console.print(
            f"[green]all {len(fleet.devices)} devices run {markup_safe(target)}[/green] "
            f"({time.monotonic() - started:.1f} s in all)"
        )
        ok = True
    except JaviaError as error:
        fail(f"{error} (logs in {root})")
    finally:
        fleet.stop()
        if cleanup and ok:
            shutil.rmtree(root, ignore_errors=True)


def _wait_online(fleet: LocalFleet, timeout: float) -> None:
    """Wait until every device has sent a heartbeat (instant updates need it)."""
    client = fleet.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        devices = client.list_devices()
        if devices and all(d.last_seen for d in devices) and len(devices) >= len(fleet.devices):
            return
        time.sleep(0.2)
    fail(f"devices did not send a heartbeat within {timeout:.0f} s")
