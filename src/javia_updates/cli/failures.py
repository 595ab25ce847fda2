"""Why devices failed, as the operator reads it: one failure, and an update's causes (issue 15).

Every text in a failure comes from a device: it is shown through
:func:`~javia_updates.cli.common.visible` (control and bidirectional
characters escaped, one line at a time), never as rich markup.
"""

from __future__ import annotations

import signal as signals

from rich.console import Group
from rich.text import Text

from javia_core.failures import FailureDetails, FailureGroupsOut
from javia_core.models import DeviceUpdateOut
from javia_updates.cli.common import (
    ApiKeyOption,
    JsonOption,
    SafeTable,
    ServerOption,
    UpdateArgument,
    admin_client,
    cell,
    console,
    friendly_errors,
    print_json,
    visible,
)

__all__ = ["failure_view", "failures_of", "show_failures"]

#: Output lines shown per tail (``--json`` has them all).
SHOWN_LINES = 20
#: Output characters shown per tail: a few very long lines stay a screenful.
SHOWN_CHARS = 2000


def _signal_name(number: int) -> str:
    try:
        return f"{number} ({signals.Signals(number).name})"
    except ValueError:
        return str(number)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def tail_excerpt(
    text: str, *, lines: int = SHOWN_LINES, chars: int = SHOWN_CHARS
) -> tuple[list[str], int, bool]:
    """The end of an output tail as tables print it.

    Returns the last non-blank lines within ``lines`` lines and ``chars``
    characters (the oldest kept line cut from its start, marked ``…``), how
    many non-blank lines were left out, and whether a kept line was cut.
    """
    every = [line for line in text.splitlines() if line.strip()]
    kept: list[str] = []
    budget = chars
    cut = False
    for line in reversed(every[-lines:]):
        if budget <= 0:
            break
        if len(line) > budget:
            line, cut = "…" + line[-budget:], True
        kept.append(line)
        budget -= len(line)
    kept.reverse()
    return kept, len(every) - len(kept), cut


def _tail(text: str) -> Text:
    kept, hidden, cut = tail_excerpt(text)
    shown = Text("\n".join(visible(line) for line in kept), style="dim")
    if hidden or cut:
        more = f"… {_plural(hidden, 'more line')}" if hidden else "… a line was cut"
        shown.append(f"\n{more}: --json for all", style="yellow")
    return shown


def failure_view(title: str, failure: FailureDetails) -> Group:
    """One failure: class, step, exit code or signal, reason, the output tails."""
    details = SafeTable.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    details.add_row("class", cell(failure.failure_class.value, "red"))
    details.add_row("step", failure.step)
    if failure.exit_code is not None:
        details.add_row("exit code", str(failure.exit_code))
    if failure.signal is not None:
        details.add_row("signal", _signal_name(failure.signal))
    details.add_row("reason", failure.reason)
    parts: list[object] = [cell(title, "bold"), details]
    if failure.output_tail:
        source = f" ({failure.output_source})" if failure.output_source else ""
        parts += [cell(f"last output{source}:"), _tail(failure.output_tail)]
    if failure.health_output_tail:
        parts += [cell("health command output:"), _tail(failure.health_output_tail)]
    return Group(*parts)  # type: ignore[arg-type]


def failures_of(rows: list[DeviceUpdateOut], *, by: str) -> list[Group]:
    """A view of each row's failure; ``by`` names rows by ``device`` or ``version``."""
    views = []
    for row in rows:
        if row.failure is None:
            continue
        name = row.device_name or str(row.device_uuid) if by == "device" else row.version
        views.append(failure_view(f"why {name} {row.status.value}", row.failure))
    return views


def example_title(name: str, count: int) -> str:
    """The heading of a cause's example failure: ``example: kitchen (3 devices)``."""
    return f"example: {name} ({_plural(count, 'device')})"


def groups_table(grouped: FailureGroupsOut) -> SafeTable:
    """The causes of an update's failures, most devices first."""
    table = SafeTable(
        title=f"{grouped.version}: {grouped.total} failed or rolled back, "
        f"{len(grouped.groups)} causes",
        title_justify="left",
    )
    for column in ("devices", "class", "cause", "example device"):
        table.add_column(column)
    for group in grouped.groups:
        table.add_row(
            str(group.count),
            cell(group.failure_class, "red"),
            group.cause or "—",
            group.example_device_name or group.example_device_uuid,
        )
    return table


def show_failures(
    update: str = UpdateArgument,
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Why devices failed an update: its failures grouped by cause, with counts and an example each."""
    with friendly_errors(), admin_client(server, api_key) as client:
        grouped = client.update_failures(update)
    if as_json:
        print_json(grouped)
        return
    if not grouped.groups:
        console.print(f"no device failed {visible(grouped.version)}", highlight=False)
        return
    console.print(groups_table(grouped))
    for group in grouped.groups:
        if group.example is not None:
            name = group.example_device_name or group.example_device_uuid
            console.print(
                failure_view(f"example: {name} ({_plural(group.count, 'device')})", group.example)
            )
