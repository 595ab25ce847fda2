"""Every command's ``--help`` reads as prose, and bash completes ``javia``.

A new user saw ``<bool>`` on plain flags, ``<list[str]>``, ``{device_uuid}``
and raw docstring markup (double backquotes, ``:mod:``) in the help, and no
shell completion at all ("Shell bash not supported").
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from javia_cli.help_text import plain_text, walk
from javia_cli.main import agent_command, command

MARKERS = re.compile(r"<bool>|<list\[[^>]*\]>|\{[A-Za-z_]+\}|``|:[a-z]+:`")


def _help(root, path: tuple[str, ...], prog_name: str) -> str:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        root.main([*path, "--help"], prog_name=prog_name, standalone_mode=False)
    return out.getvalue()


@pytest.mark.parametrize(
    ("build", "prog_name"), [(command, "javia"), (agent_command, "javia agent")]
)
def test_no_help_page_shows_type_tags_braces_or_docstring_markup(
    build, prog_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    root = build()
    pages = {path: _help(root, path, prog_name) for path, _ in walk(root)}
    assert len(pages) > (30 if prog_name == "javia" else 5)
    for path, page in pages.items():
        assert "Usage:" in page, (path, page)
        found = sorted(set(MARKERS.findall(page)))
        assert not found, f"{prog_name} {' '.join(path)} --help shows {found}:\n{page}"
    run = pages[("agent", "run")] if prog_name == "javia" else pages[("run",)]
    assert "With --once: exit 1" in run and "javia_agent.daemon" in run
    assert "Usage: javia devices show [OPTIONS] DEVICE_UUID" in pages.get(
        ("devices", "show"), "Usage: javia devices show [OPTIONS] DEVICE_UUID"
    )


def test_plain_text_drops_roles_and_literals_keeping_their_words() -> None:
    assert plain_text("With ``--once``: see :mod:`javia_agent.daemon`") == (
        "With --once: see javia_agent.daemon"
    )
    assert plain_text(":func:`~javia_core.scheduling.supersede` and :class:`A`") == (
        "supersede and A"
    )


def _bash_completions(tmp_path: Path, *lines: str) -> list[list[str]]:
    """What bash offers for each command line (its last word being completed).

    As bash does it: the hook is sourced from ``_JAVIA_COMPLETE=source_bash
    javia``, then its function runs with ``COMP_WORDS``/``COMP_CWORD`` set, and
    it calls ``javia`` with ``_JAVIA_COMPLETE=complete_bash``.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    javia = bin_dir / "javia"
    javia.write_text(f'#!/bin/sh\nexec {sys.executable} -m javia_cli.main "$@"\n')
    javia.chmod(javia.stat().st_mode | stat.S_IXUSR)
    script = ['eval "$(_JAVIA_COMPLETE=source_bash javia)"']
    for line in lines:
        script.append(f"COMP_WORDS=({line}); COMP_CWORD={len(line.split()) - 1}")
        script.append('_javia_completion javia; echo "${COMPREPLY[*]}"')
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    environment["PATH"] = f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "--norc", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "not supported" not in result.stderr, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_subcommands_and_options(tmp_path: Path) -> None:
    # Three interpreter starts (source, two completions): a few seconds on a busy machine.
    subcommand, option = _bash_completions(tmp_path, "javia agent st", "javia devices list --re")
    assert subcommand == ["status"]
    assert option == ["--revoked"]


def test_the_root_help_offers_to_install_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    page = _help(command(), (), "javia")
    assert "--install-completion" in page and "--show-completion" in page
