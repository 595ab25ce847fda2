"""``javia webhooks``: tell other systems what happens (docs/webhooks.md).

``add URL --event E ...`` prints the webhook's signing secret once; ``list``,
``remove ID``, ``test ID`` (queues a ``webhook.test`` event) and
``deliveries`` (each event's attempts: status code or error, duration).
"""

from __future__ import annotations

import typer

from javia_updates.cli.common import (
    ApiKeyOption,
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
    print_json,
    wire_time,
)
from javia_updates.webhooks.events import EVENT_TYPES
from javia_updates.webhooks.models import check_webhook_url

app = typer.Typer(
    help="Webhooks: signed JSON events POSTed to other systems, retried until delivered.",
    no_args_is_help=True,
)

STATE_STYLE = {"delivered": "green", "pending": "yellow", "failed": "red"}
_complete_event = choices(*sorted(EVENT_TYPES))


@app.command("add")
def add(
    url: str = typer.Argument(..., help="Receiver URL (http:// or https://)."),
    events: list[str] = typer.Option(
        [],
        "--event",
        help="An event to send (repeat the option); see docs/webhooks.md.",
        autocompletion=_complete_event,
    ),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Add a webhook; prints its signing secret, shown this once."""
    try:
        check_webhook_url(url)
    except ValueError as error:
        fail(f"invalid URL: {error}")
    if not events:
        fail(f"name at least one --event, e.g. --event rollout.halted (events: {_events()})")
    unknown = sorted(set(events) - EVENT_TYPES)
    if unknown:
        fail(f"unknown event {unknown[0][:64]!r}: expected one of {_events()}")
    with friendly_errors(), admin_client(server, api_key) as client:
        created = client.add_webhook(url, events)
    if as_json:
        print_json(created)
        return
    console.print(
        f"webhook {created.id} sends {', '.join(created.events)} to {markup_safe(created.url)}",
        highlight=False,
    )
    console.print("signing secret (shown once; verify X-Javia-Signature with it):", highlight=False)
    console.print(created.secret, highlight=False, soft_wrap=True, markup=False)


def _events() -> str:
    return ", ".join(sorted(EVENT_TYPES))


@app.command("list")
def list_webhooks(
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """One line per webhook: id, URL (without credentials or query), events, deliveries."""
    with friendly_errors(), admin_client(server, api_key) as client:
        hooks = client.list_webhooks()
    if as_json:
        print_json(hooks)
        return
    table = SafeTable(title=f"{len(hooks)} webhook(s)", title_justify="left")
    for column in ("id", "url", "events", "pending", "delivered", "failed", "added"):
        table.add_column(column)
    for hook in hooks:
        table.add_row(
            cell(hook.id),
            cell(hook.url),
            cell(", ".join(hook.events)),
            cell(hook.pending),
            cell(hook.delivered),
            cell(hook.failed, "red" if hook.failed else ""),
            cell(ago(hook.created_at)),
        )
    console.print(table)


@app.command("remove")
def remove(
    webhook_id: int = typer.Argument(..., min=1, help="The webhook's id (javia webhooks list)."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
) -> None:
    """Remove a webhook and its pending deliveries."""
    with friendly_errors(), admin_client(server, api_key) as client:
        client.remove_webhook(webhook_id)
    console.print(f"webhook {webhook_id} removed", highlight=False)


@app.command("test")
def test(
    webhook_id: int = typer.Argument(..., min=1, help="The webhook's id (javia webhooks list)."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Queue a webhook.test event for this webhook; see it arrive with `javia webhooks deliveries`."""
    with friendly_errors(), admin_client(server, api_key) as client:
        queued = client.test_webhook(webhook_id)
    if as_json:
        print_json(queued)
        return
    console.print(
        f"test event {queued.event_id} queued for webhook {webhook_id}: "
        "`javia webhooks deliveries` shows its attempts",
        highlight=False,
        markup=False,
    )


@app.command("deliveries")
def deliveries(
    webhook_id: int | None = typer.Option(None, "--webhook", min=1, help="Only this webhook."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Newest N deliveries."),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """The newest deliveries: event, state, attempts, the last status code or error."""
    with friendly_errors(), admin_client(server, api_key) as client:
        rows = client.webhook_deliveries(webhook_id, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = SafeTable(title=f"{len(rows)} deliver(ies)", title_justify="left")
    for column in ("webhook", "event", "event id", "state", "attempts", "last answer", "when"):
        table.add_column(column)
    for row in rows:
        last = row.attempt_log[-1] if row.attempt_log else None
        answer = (
            "-"
            if last is None
            else f"{last.status_code or last.error} in {last.duration_seconds:.2f} s"
            if last.error is None
            else f"{last.error} ({last.duration_seconds:.2f} s)"
        )
        when = (
            f"retry at {wire_time(row.next_attempt_at)}"
            if row.state == "pending" and row.attempts
            else ago(row.finished_at or row.created_at)
        )
        table.add_row(
            cell(row.webhook_id),
            cell(row.event_type),
            cell(row.event_id),
            cell(row.state, STATE_STYLE.get(row.state, "")),
            cell(row.attempts),
            cell(answer),
            cell(when),
        )
    console.print(table)
