"""Help as a person reads it: every ``--help`` without type tags or docstring markup.

The command groups keep Python docstrings (Sphinx roles such as
``:mod:`javia_agent.daemon```, double-backquoted literals) because they are
also the code's documentation; Typer would print them raw, and label every
plain flag ``<bool>``, every repeatable option ``<list[str]>`` and every
argument ``{device_uuid}`` in the usage line. :func:`polish` rewrites the
built command tree once, before it runs, for every command at any depth:

* ``:role:`~a.b.c``` becomes ``c`` (``a.b.c`` without the tilde), a literal in
  double backquotes its bare text;
* a flag shows no type, a repeatable option its element type (``<str>``),
  an argument its name in capitals (``DEVICE_UUID``, ``[PATH]`` when
  optional), as Click does, in the usage line too (Typer writes ``{...}``).

Nothing here changes what a command accepts; ``tests/test_cli_help.py``
walks every command's help and refuses the markers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = ["plain_text", "polish", "walk"]

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_ELEMENT = re.compile(r"^<list\[(\w+)\]>$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return target.rsplit(".", 1)[-1] if match.group(1) else target


def plain_text(text: str) -> str:
    """``text`` without Sphinx roles and double-backquoted literals (their words stay)."""
    return _LITERAL.sub(r"\1", _ROLE.sub(_role, text))


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, command)`` for ``command`` and every subcommand below it, depth first."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


def polish(command: Any) -> Any:
    """Rewrite the help of ``command`` (a built Click command tree) in place; return it.

    Args:
        command: what ``typer.main.get_command`` returns for an app.

    Returns:
        The same object, its help texts and parameter labels rewritten.
    """
    for _, each in walk(command):
        for attribute in ("help", "short_help", "epilog"):
            value = getattr(each, attribute, None)
            if isinstance(value, str):
                setattr(each, attribute, plain_text(value))
        context = each.context_class(each, info_name=each.name)
        help_option = each.get_help_option(context)
        for param in [*each.params, *([help_option] if help_option is not None else [])]:
            _label(param, context)
    return command


def _label(param: Any, context: Any) -> None:
    """A parameter's help without markup, and a label a person expects."""
    if isinstance(getattr(param, "help", None), str):
        param.help = plain_text(param.help)
    if param.metavar is not None:
        return
    if param.param_type_name == "argument":
        param.metavar = name = param.name.upper()
        # Click's usage form: ``DEVICE_UUID`` required, ``[PATH]`` optional (not ``{...}``).
        usage = name if param.required else f"[{name}]"
        usage += "..." if param.nargs != 1 else ""
        param.get_usage_pieces = lambda _context, usage=usage: [usage]
    elif getattr(param, "is_flag", False):
        param.metavar = ""
    elif getattr(param, "multiple", False):
        element = _ELEMENT.match(param.display_type(context))
        if element is not None:
            param.metavar = f"<{element.group(1).lower()}>"
