"""``javia updates``: published updates, their progress and their plan."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from javia_core.models import DeviceUpdateOut, PlanEntry, UpdateOut
from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    SafeTable,
    ServerOption,
    UpdateArgument,
    admin_client,
    cell,
    check_reason,
    console,
    friendly_errors,
    markup_safe,
    parse_time,
    print_json,
    wire_time,
)
from javia_updates.cli.failures import failures_of, show_failures
from javia_updates.cli.revert import revert_update

app = typer.Typer(help="List, inspect and plan updates.", no_args_is_help=True)
app.command("revert")(revert_update)
app.command("failures")(show_failures)

STATUS_ORDER = (
    "pending",
    "downloading",
    "staged",
    "installing",
    "completed",
    "failed",
    "rolled_back",
    "retrying",
    "superseded",
    "cancelled",
)


def _human_size(size: object) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000); anything but a number as it is."""
    if not isinstance(size, int | float):
        return str(size)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _counts(update: UpdateOut) -> str:
    counts = update.status_counts
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
    table = SafeTable(title=f"{len(updates)} update(s)", title_justify="left")
    columns = ("id", "version", "type", "rollout", "published (UTC)", "size", "devices")
    for column in (*columns, "description"):
        table.add_column(column)
    for update in updates:
        table.add_row(
            str(update.id),
            update.version,
            update.update_type.value,
            "—" if update.rollout is None else update.rollout.state.value,
            str(wire_time(update.created_at))[:19],
            _human_size(update.size),
            _counts(update),
            update.description or "",
        )
    console.print(table)


def update_header(info: UpdateOut) -> str:
    """The first line of ``updates show`` (rich markup): version, type, id, key, description if any."""
    header = (
        f"[bold]{markup_safe(info.version)}[/bold] ({markup_safe(info.update_type.value)}), "
        f"update {markup_safe(info.id)}, key {markup_safe(info.key_id)}"
    )
    return header + (f": {markup_safe(info.description)}" if info.description else "")


@app.command("show")
def show_update(
    update: str = UpdateArgument,
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One update, its rollout (state, a bar per phase, health) and every targeted device's progress."""
    with friendly_errors(), admin_client(server, api_key) as client:
        info = client.get_update(update)
        rows = client.update_devices(info.id)
    if as_json:
        print_json({"update": info, "devices": rows})
        return
    console.print(update_header(info), highlight=False)
    if info.system_packages:
        packages = ", ".join(info.system_packages)
        console.print("system packages: " + markup_safe(packages), highlight=False)
    console.print(markup_safe(_counts(info)), highlight=False)
    if info.rollout is not None:
        from javia_updates.cli.rollout_view import rollout_view

        console.print(rollout_view(info.rollout))
    console.print(progress_table(rows))
    for view in failures_of(rows, by="device"):
        console.print(view)


def progress_table(rows: list[DeviceUpdateOut], title: str = "devices") -> Table:
    """A rich table of per-device progress rows, shown as text."""
    table = SafeTable(title=title, title_justify="left")
    for column in ("device", "status", "scheduled for (UTC)", "started", "completed", "error"):
        table.add_column(column)
    style = {"completed": "green", "failed": "red", "rolled_back": "red", "pending": "dim"}
    for row in rows:
        status = row.status.value
        shown = status
        if row.regressed_at is not None:
            status = "failed"  # its style: a regression counts as a failure
            shown += f", regressed: {row.regression_reason or 'after install'}"
        table.add_row(
            row.device_name or str(row.device_uuid),
            cell(shown, style.get(status, "yellow")),
            (wire_time(row.scheduled_for) or "—")[:19],
            (wire_time(row.started_at) or "—")[11:19],
            (wire_time(row.completed_at) or "—")[11:19],
            row.error_message or "",
        )
    return table


def plan_table(plans: list[PlanEntry], title: str) -> Table:
    """A rich table of a rollout plan: who gets the update, when (local and UTC), why; shown as text.

    With phases (``PlanEntry.phase``), a column shows each device's phase, 1-based.

    A timezone the CLI cannot read is shown as the server sent it.
    """
    table = SafeTable(title=title, title_justify="left")
    phased = any(plan.phase is not None for plan in plans)
    for column in (
        "device",
        *(("phase",) if phased else ()),
        "timezone",
        "gets it",
        "installs (device-local)",
        "installs (UTC)",
        "why",
    ):
        table.add_column(column)
    for plan in plans:
        tz = plan.timezone or "UTC"
        at_utc = parse_time(plan.install_at_utc)
        utc, local = (at_utc.strftime("%Y-%m-%d %H:%M"), "—") if at_utc else ("—", "—")
        if at_utc is not None:
            try:
                local_time: datetime = at_utc.astimezone(ZoneInfo(tz))
            except (ValueError, LookupError, OSError):  # KeyError: unknown; OSError: "America"
                local = "unknown timezone"
            else:
                local = local_time.strftime("%a %Y-%m-%d %H:%M %Z")
        phase = () if not phased else ("—" if plan.phase is None else str(plan.phase + 1),)
        table.add_row(
            plan.device_name or str(plan.device_uuid),
            *phase,
            tz,
            cell("yes", "green") if plan.gets_row else cell("not now", "dim"),
            local,
            utc,
            plan.reason or "",
        )
    return table


@app.command("plan")
def plan_update(
    update: str = UpdateArgument,
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


ROLLOUT_COMMANDS = {
    "pause": "Pause the rollout: devices that have not started do not start; installs finish.",
    "resume": "Resume a paused rollout.",
    "cancel": "Cancel the rollout: every device that has not started never gets this version.",
    "approve": "Approve a rollout (or its next phase) that waits for approval.",
    "advance": "Open the next phase now, without waiting for the soak.",
}


def rollout_line(info: UpdateOut) -> str:
    """One line: the update's rollout state and open phase, e.g. ``v1.5.0: paused, phase 2 of 4 (10%)``."""
    rollout = info.rollout
    if rollout is None:
        return f"{info.version}: no rollout"
    phase = rollout.phase
    line = (
        f"{info.version}: {rollout.state.value}, phase {phase + 1} of {len(rollout.phases)} "
        f"({rollout.phases[phase]}%)"
    )
    if rollout.halt_reason:
        line += f"; halted: {rollout.halt_reason}"
    return line


def _rollout_command(action: str) -> None:
    def command(
        update: str = UpdateArgument,
        reason: str | None = typer.Option(None, "--reason", help="Why, for the audit log."),
        server: str | None = ServerOption,
        api_key: str | None = ApiKeyOption,
        as_json: bool = JsonOption,
    ) -> None:
        check_reason(reason)
        with friendly_errors(), admin_client(server, api_key) as client:
            info = client.rollout_command(update, action, reason)
        if as_json:
            print_json(info)
            return
        console.print(markup_safe(rollout_line(info)), highlight=False)

    command.__doc__ = ROLLOUT_COMMANDS[action]
    app.command(action)(command)


for _action in ROLLOUT_COMMANDS:
    _rollout_command(_action)
