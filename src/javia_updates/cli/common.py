"""Shared pieces of the CLI: consoles, operator settings, error reporting, safe display.

Operator settings come from the environment (``JAVIA_SERVER_URL``,
``JAVIA_API_KEY``, ``JAVIA_SIGNING_KEY``) over a TOML file
(``JAVIA_OPERATOR_CONFIG``, default ``~/.config/javia/operator.toml``);
command-line flags win over both.

Everything the server answers is display text from the other side (a device
names itself, writes its metadata and its error messages): it reaches the
operator's terminal only through :func:`visible`, :func:`markup_safe`,
:func:`cell` or a :class:`SafeTable`, never as rich markup or raw bytes.
``--json`` output is written by :func:`print_json`, whose JSON escapes keep
every value exact.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.markup import escape
from rich.protocol import is_renderable
from rich.table import Table
from rich.text import Text

from javia_core.errors import JaviaError
from javia_core.input_rules import is_invisible
from javia_core.settings_sources import EnvOverTomlSettings

if TYPE_CHECKING:
    from javia_updates.admin_client import AdminClient

# emoji=False: ":smile:" in a device's name is shown as written, not as a picture.
console = Console(emoji=False)
error_console = Console(stderr=True, emoji=False)

# Code points that must not reach a terminal as they are: C0 controls (ESC starts
# the sequences that retitle, clear or recolour a terminal; newline and tab fake
# table rows and columns), DEL and C1 controls (U+009B is a one-byte CSI), the
# bidirectional marks, embeddings, overrides and isolates (Unicode TR9: they
# reorder what the operator reads), the line and paragraph separators, and lone
# surrogates (not encodable: printing one raises).
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape_code_point(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object, *, newlines: bool = False) -> str:
    """``str(value)`` with every unsafe code point written as a visible escape.

    Control characters (C0, DEL, C1), bidirectional controls, line and
    paragraph separators, invisible characters
    (:func:`javia_core.input_rules.is_invisible`) and lone surrogates become ``\\xNN`` or ``\\uNNNN``
    (ESC shows as the four characters ``\\x1b``), so device text can neither
    drive the operator's terminal nor fake a table row. With ``newlines``,
    ``\\n`` is kept (multi-line messages of our own). The result is plain text,
    not rich markup: pass it to :func:`markup_safe` or wrap it in a ``Text``.
    """
    text = str(value)
    if newlines:
        return "\n".join(_visible_line(line) for line in text.split("\n"))
    return _visible_line(text)


def _visible_line(text: str) -> str:
    text = _UNSAFE.sub(_escape_code_point, text)
    if text.isascii():
        return text
    return "".join(
        (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") if is_invisible(c) else c
        for c in text
    )


def markup_safe(value: object, *, newlines: bool = False) -> str:
    """:func:`visible` text with rich markup escaped, for an f-string given to ``console.print``.

    ``[/x]`` in a device's name prints as ``[/x]`` instead of raising a markup error.
    """
    return escape(visible(value, newlines=newlines))


def cell(value: object, style: str = "") -> Text:
    """A table cell (or line part): ``value`` exactly as :func:`visible` writes it, in ``style``.

    A ``Text`` is never parsed for markup or emoji codes.
    """
    return Text(visible(value), style=style)


class SafeTable(Table):
    """A rich ``Table`` whose string cells and title are shown as text, never as markup.

    Every ``str`` cell goes through :func:`cell`; a deliberate style is
    passed as a ``Text`` (``cell(status, "green")``), which is kept as it is.
    Use it for every table that shows anything the server answered.
    """

    def __init__(self, *columns: Any, title: str | Text | None = None, **options: Any) -> None:
        if isinstance(title, str):
            title = cell(title)
        super().__init__(*columns, title=title, **options)

    def add_row(self, *renderables: Any, **options: Any) -> None:
        """Add a row; ``str`` cells (and anything not a rich renderable) become :func:`cell` text."""
        super().add_row(
            *(
                value
                if value is None or (is_renderable(value) and not isinstance(value, str))
                else cell(value)
                for value in renderables
            ),
            **options,
        )


DEFAULT_OPERATOR_CONFIG = Path("~/.config/javia/operator.toml").expanduser()
DEFAULT_SIGNING_KEY = Path("~/.config/javia/keys/javia-signing.pem").expanduser()


def _operator_config_path() -> Path:
    import os

    return Path(os.environ.get("JAVIA_OPERATOR_CONFIG", str(DEFAULT_OPERATOR_CONFIG))).expanduser()


class OperatorSettings(EnvOverTomlSettings):
    """Where the operator's commands find the server and the signing key."""

    model_config = SettingsConfigDict(env_prefix="JAVIA_", extra="ignore")

    server_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    signing_key: Path = DEFAULT_SIGNING_KEY

    @classmethod
    def toml_config_path(cls) -> Path:
        """``$JAVIA_OPERATOR_CONFIG`` or ``~/.config/javia/operator.toml``."""
        return _operator_config_path()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line on stderr and exit with ``code``.

    ``message`` is shown as text (:func:`markup_safe`): it often quotes what the
    server or the user sent.
    """
    error_console.print(
        f"[red]error:[/red] {markup_safe(message, newlines=True)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn javia errors into one red line and exit 1 (DESIGN.md section 1)."""
    try:
        yield
    except JaviaError as error:
        fail(str(error))


def admin_client(server_url: str | None, api_key: str | None) -> AdminClient:
    """An :class:`AdminClient` from flags over settings; exits with a clear line if no key.

    A server URL that is not ``http(s)://host`` raises ``AddressError`` (a
    ``JaviaError``) before any request: call it inside :func:`friendly_errors`.
    """
    from javia_updates.admin_client import AdminClient

    settings = OperatorSettings()
    url = server_url or settings.server_url
    key = operator_api_key(api_key, settings)
    if not key:
        fail("no admin API key: pass --api-key or set JAVIA_API_KEY")
    return AdminClient(url, key)


def operator_api_key(api_key: str | None, settings: OperatorSettings) -> str | None:
    """The admin key from ``--api-key`` over the settings, or None; exits if it cannot be sent.

    The one place the CLI reads the admin key: a key that is not printable
    ASCII without spaces (:mod:`javia_updates.secret_rules`) is one red line
    and exit 1 before any request, never a traceback from the header
    encoder, and the key itself is never shown.
    """
    from javia_updates.secret_rules import SECRET_FORM, is_secret_form

    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if key and not is_secret_form(key):
        fail(
            f"the admin key must be {SECRET_FORM}: check --api-key, JAVIA_API_KEY "
            f"or api_key in {_operator_config_path()}"
        )
    return key


def as_json_data(value: Any) -> Any:
    """``value`` with every wire model in it as the JSON the server sent (``model_dump(mode="json")``)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [as_json_data(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json_data(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout (for scripts: no colour, no wrapping).

    Wire models are written as the server's JSON (:func:`as_json_data`).
    """
    sys.stdout.write(json.dumps(as_json_data(value), indent=2, default=str) + "\n")


_TIME = TypeAdapter(datetime)


def wire_time(value: datetime | None) -> str | None:
    """A timestamp as the API writes it (ISO 8601, ``Z`` for UTC), or None."""
    return None if value is None else str(_TIME.dump_python(value, mode="json"))


def parse_time(value: str | datetime | None) -> datetime | None:
    """Parse an ISO 8601 timestamp from the API into an aware datetime.

    Raises:
        ValueError: ``value`` is not an ISO 8601 timestamp.
    """
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    """``'42 s ago'``-style age of an API timestamp, ``'never'``, or the value if it is no timestamp."""
    try:
        moment = parse_time(value)
    except ValueError:
        return visible(value)
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _checked_server_url(context: typer.Context, value: str | None) -> str | None:
    """``--server`` checked before any request (:func:`javia_core.addresses.check_server_url`)."""
    from javia_core.addresses import check_server_url

    if value is None or context.resilient_parsing:  # shell completion: no message
        return value
    with friendly_errors():
        return check_server_url(value)


def _checked_device_uuid(context: typer.Context, value: str) -> str:
    """A device uuid argument by the server's rule (:func:`javia_core.addresses.parse_device_uuid`)."""
    from javia_core.addresses import parse_device_uuid

    if context.resilient_parsing:
        return value
    with friendly_errors():
        return str(parse_device_uuid(value))


def _checked_update_reference(context: typer.Context, value: str) -> str:
    """An update id or version argument by the server's rule (:func:`javia_core.addresses.parse_update_reference`)."""
    from javia_core.addresses import parse_update_reference

    if context.resilient_parsing:
        return value
    with friendly_errors():
        return str(parse_update_reference(value))


def choices(*values: str) -> Callable[[str], list[str]]:
    """Shell completion for an option taking one of ``values``: those starting with what is typed."""

    def complete(incomplete: str) -> list[str]:
        return [value for value in values if value.startswith(incomplete)]

    return complete


ServerOption = typer.Option(
    None,
    "--server",
    envvar="JAVIA_SERVER_URL",
    help="Server base URL.",
    callback=_checked_server_url,
)
#: A device uuid argument, refused before any request unless it is a uuid.
DeviceUuidArgument = typer.Argument(..., help="The device's uuid.", callback=_checked_device_uuid)
#: An update id or version argument, refused before any request unless it is one.
UpdateArgument = typer.Argument(
    ..., help="Update id or version (vX.Y.Z).", callback=_checked_update_reference
)
ApiKeyOption = typer.Option(
    None, "--api-key", envvar="JAVIA_API_KEY", help="Admin API key.", show_default=False
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


#: The longest ``--reason`` the server keeps (``RolloutCommand.reason``), characters.
MAX_REASON_CHARACTERS = 500


def check_reason(reason: str | None) -> str | None:
    """``--reason`` if it is one line of at most 500 printable characters, else one red line.

    Checked before any request (the server refuses the same with a 422): a
    newline or a control character would break the audit log's one line.
    """
    from javia_core.models import check_no_control_characters

    if reason is None:
        return None
    try:
        check_no_control_characters(reason, "--reason", multiline=False)
    except ValueError as error:
        fail(str(error))
    if len(reason) > MAX_REASON_CHARACTERS:
        fail(f"--reason is {len(reason)} characters: at most {MAX_REASON_CHARACTERS} (one line)")
    return reason


def parse_tags(values: list[str] | None, option: str = "--tag") -> list[str]:
    """Tags given to ``option`` (repeatable, each may be comma-separated), checked locally.

    Returns them de-duplicated and sorted; a malformed tag is one red line
    naming it and the expected form, and exit 1, before any request is sent.
    """
    from javia_core.models import check_tags

    items = [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
    if any(not value.strip() for value in values or []):
        items.append("")  # --add "": a tag that is not valid, not "nothing to change"
    try:
        return check_tags(items)
    except ValueError as error:
        fail(f"invalid {option}: {error}")
