"""``javia devices``: the fleet as the server sees it, and device identity.

``revoke`` and ``rotate-token`` act on one device's token;
``enrollment-token create|list|revoke`` manage the tokens with which new
devices register themselves (docs/security.md, "Device identity").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.table import Table

from javia_core.models import DeviceStatus
from javia_updates.cli.common import (
    ApiKeyOption,
    DeviceUuidArgument,
    JsonOption,
    SafeTable,
    ServerOption,
    admin_client,
    ago,
    cell,
    choices,
    console,
    fail,
    friendly_errors,
    markup_safe,
    parse_tags,
    print_json,
    wire_time,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from javia_core.models import DeviceOut, EnrollmentTokenOut
    from javia_updates.admin_client import AdminClient

M = TypeVar("M", bound="BaseModel")

app = typer.Typer(
    help="List and inspect devices; revoke and rotate their tokens.", no_args_is_help=True
)
enrollment_app = typer.Typer(
    help="Enrollment tokens: new devices register themselves without the admin key.",
    no_args_is_help=True,
)
app.add_typer(enrollment_app, name="enrollment-token")

STATUS_STYLE = {"online": "green", "offline": "red", "updating": "yellow", "revoked": "red"}
REVOKED = "revoked"
#: What ``--status`` takes: the server's device statuses and revoked.
DEVICE_STATUSES = (*(status.value for status in DeviceStatus), REVOKED)


def shown_status(device: DeviceOut) -> str:
    """The status an operator sees: ``revoked`` for a device whose token is revoked.

    A revoked device cannot heartbeat, so the status it last reported
    (``online``, ``updating``) says nothing any more; until its token is
    rotated it is shown as revoked, whatever the server derived.
    """
    return REVOKED if device.token_revoked_at is not None else device.status.value


@app.command("list")
def list_devices(
    status: str | None = typer.Option(
        None,
        "--status",
        help="online, offline, updating or revoked.",
        autocompletion=choices(*DEVICE_STATUSES),
    ),
    revoked: bool | None = typer.Option(
        None,
        "--revoked/--no-revoked",
        help="Only devices whose token is revoked, or only those whose token is not.",
        show_default=False,
    ),
    tag: str | None = typer.Option(None, "--tag", help="Only devices carrying this tag."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One line per device: name, version, status, revoked, last heartbeat, timezone, tags.

    A device whose token is revoked shows the status revoked.
    """
    if tag is not None:
        wanted = parse_tags([tag])
        if len(wanted) != 1:
            fail(f"--tag takes one tag, e.g. --tag kitchen (got {tag[:60]!r})")
        tag = wanted[0]
    if status is not None and status not in DEVICE_STATUSES:
        fail(f"--status {status[:60]!r}: expected one of {', '.join(DEVICE_STATUSES)}")
    if status == REVOKED:
        if revoked is False:
            fail("--status revoked and --no-revoked exclude each other: drop one")
        status, revoked = None, True
    with friendly_errors(), admin_client(server, api_key) as client:
        devices = client.list_devices(status=status, tag=tag)
    if status is not None:  # the server's status; a revoked device is shown revoked instead
        devices = [device for device in devices if device.token_revoked_at is None]
    if revoked is not None:
        devices = [device for device in devices if (device.token_revoked_at is not None) == revoked]
    if as_json:
        print_json(devices)
        return
    table = SafeTable(title=f"{len(devices)} device(s)", title_justify="left")
    for column in (
        "device",
        "uuid",
        "version",
        "status",
        "revoked",
        "last seen",
        "timezone",
        "model",
        "tags",
    ):
        table.add_column(column)
    for device in devices:
        table.add_row(
            device.device_name or "—",
            str(device.device_uuid),
            device.current_version or "—",
            cell(shown_status(device), STATUS_STYLE.get(shown_status(device), "")),
            ago(device.token_revoked_at) if device.token_revoked_at else "—",
            ago(device.last_seen),
            device.timezone or "UTC",
            str(device.metadata.get("hardware_model") or "—"),
            ", ".join(device.tags) or "—",
        )
    console.print(table)


@app.command("show")
def show_device(
    device_uuid: str = DeviceUuidArgument,
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
    details = SafeTable.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    for label, value in (
        ("device name", device.device_name),
        ("device uuid", str(device.device_uuid)),
        ("current version", device.current_version),
        ("status", shown_status(device)),
        ("timezone", device.timezone),
        ("tags", ", ".join(device.tags)),
    ):
        details.add_row(label, value or "—")
    if device.token_revoked_at:
        details.add_row("token revoked", str(wire_time(device.token_revoked_at)))
    details.add_row("last seen", f"{wire_time(device.last_seen) or '—'} ({ago(device.last_seen)})")
    details.add_row("registered", str(wire_time(device.registered_at)))
    for key, value in sorted(device.metadata.items()):
        details.add_row(key.replace("_", " "), str(value))
    console.print(details)
    if history:
        table = SafeTable(title="updates", title_justify="left")
        for column in ("version", "status", "scheduled for (UTC)", "completed", "error"):
            table.add_column(column)
        for row in history:
            table.add_row(
                row.version,
                row.status.value,
                wire_time(row.scheduled_for) or "—",
                wire_time(row.completed_at) or "—",
                row.error_message or "",
            )
        console.print(table)
        from javia_updates.cli.failures import failures_of

        for view in failures_of(history, by="version"):
            console.print(view)


def _call_unless_json(
    server: str | None, api_key: str | None, as_json: bool, call: Callable[[AdminClient], M]
) -> M | None:
    """The server's answer to ``call(client)``, or None once printed as JSON (``--json``).

    Exits with a clear line on a missing admin key or a server error
    (:func:`admin_client`, :func:`friendly_errors`).
    """
    with friendly_errors(), admin_client(server, api_key) as client:
        answer = call(client)
    if as_json:
        print_json(answer)
        return None
    return answer


@app.command("revoke")
def revoke(
    device_uuid: str = DeviceUuidArgument,
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Revoke a device's token at once: it gets 401 until 'rotate-token' issues a new one."""
    target = device_uuid
    device = _call_unless_json(
        server, api_key, as_json, lambda client: client.revoke_device_token(target)
    )
    if device is None:
        return
    console.print(
        f"revoked the token of device {target}"
        + (f" ({markup_safe(device.device_name)})" if device.device_name else "")
        + "; it can no longer call the server. Re-admit it with: javia devices rotate-token "
        + target,
        highlight=False,
    )


@app.command("tag")
def tag_device(
    device_uuid: str = DeviceUuidArgument,
    add: list[str] | None = typer.Option(None, "--add", help="Tag to add (repeatable)."),
    remove: list[str] | None = typer.Option(None, "--remove", help="Tag to remove (repeatable)."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Add and remove a device's tags; it joins updates published to a new tag at its next heartbeat."""
    target = device_uuid
    added, removed = parse_tags(add, "--add"), parse_tags(remove, "--remove")
    if not added and not removed:
        fail("nothing to change: give --add TAG and/or --remove TAG (e.g. --add kitchen)")
    device = _call_unless_json(
        server,
        api_key,
        as_json,
        lambda client: client.change_device_tags(target, add=added, remove=removed),
    )
    if device is None:
        return
    console.print(
        f"device {target}"
        + (f" ({markup_safe(device.device_name)})" if device.device_name else "")
        + f" is tagged: {markup_safe(', '.join(device.tags) or 'no tags')}",
        highlight=False,
    )


@app.command("rotate-token")
def rotate_token(
    device_uuid: str = DeviceUuidArgument,
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Issue a new device token (shown once); the old one stops working at once."""
    target = device_uuid
    registered = _call_unless_json(
        server, api_key, as_json, lambda client: client.rotate_device_token(target)
    )
    if registered is None:
        return
    console.print(f"new token for device {target} (shown this once):", highlight=False)
    console.print(cell(registered.device_token), highlight=False, soft_wrap=True)
    console.print(
        "write it to the device's token file (default /etc/javia/device-token, mode 0600); "
        "the running agent re-reads that file when the server refuses its old token, "
        "so no restart is needed",
        highlight=False,
    )


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> int:
    """Seconds in ``text``: a number with an optional unit s, m, h or d (``90m``, ``24h``, ``7d``).

    Raises:
        typer.BadParameter: anything else.
    """
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration: expected e.g. 90m, 24h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _token_table(tokens: list[EnrollmentTokenOut]) -> Table:
    table = SafeTable(title=f"{len(tokens)} enrollment token(s)", title_justify="left")
    for column in ("id", "label", "uses", "expires (UTC)", "state"):
        table.add_column(column)
    for token in tokens:
        if token.revoked_at:
            state = cell("revoked", "red")
        elif token.usable:
            state = cell("usable", "green")
        elif token.uses >= token.max_uses:
            state = cell("used up")
        else:
            state = cell("expired")
        table.add_row(
            str(token.id),
            token.label or "—",
            f"{token.uses}/{token.max_uses}",
            str(wire_time(token.expires_at)),
            state,
        )
    return table


@enrollment_app.command("create")
def create_enrollment_token(
    uses: int = typer.Option(1, "--uses", min=1, help="How many devices may register with it."),
    expires_in: str = typer.Option(
        "24h", "--expires-in", help="Validity: a number with s, m, h or d (e.g. 24h, 7d)."
    ),
    label: str | None = typer.Option(None, "--label", help="A note, e.g. the batch it is for."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create an enrollment token (shown once) for 'javia agent register --enrollment-token'."""
    seconds = parse_duration(expires_in)
    with friendly_errors(), admin_client(server, api_key) as client:
        created = client.create_enrollment_token(
            max_uses=uses, expires_in_seconds=seconds, label=label
        )
    if as_json:
        print_json(created)
        return
    console.print(
        f"enrollment token {markup_safe(created.id)}: registers up to "
        f"{markup_safe(created.max_uses)} device(s) until {markup_safe(wire_time(created.expires_at))} (UTC); "
        "shown this once:",
        highlight=False,
    )
    console.print(cell(created.token), highlight=False, soft_wrap=True)
    console.print(
        "on each new device: javia agent register --server URL --enrollment-token TOKEN",
        highlight=False,
    )


@enrollment_app.command("list")
def list_enrollment_tokens(
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Enrollment tokens with their uses, expiry and state (never the tokens themselves)."""
    with friendly_errors(), admin_client(server, api_key) as client:
        tokens = client.list_enrollment_tokens()
    if as_json:
        print_json(tokens)
        return
    console.print(_token_table(tokens))


@enrollment_app.command("revoke")
def revoke_enrollment_token(
    token_id: int = typer.Argument(..., min=1, help="The token's id (see 'list')."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Revoke an enrollment token; devices it registered keep working."""
    with friendly_errors(), admin_client(server, api_key) as client:
        token = client.revoke_enrollment_token(token_id)
    if as_json:
        print_json(token)
        return
    console.print(f"revoked enrollment token {markup_safe(token.id)}", highlight=False)
