"""``javia publish`` asking its questions in a real terminal (a pseudo-terminal).

A new user was offered v7.1.1 (from the local VERSION file) while v7.2.0 was
published, learned it was too low only after every question, saw ``--version``
without ``--type`` fail instead of asking the rest, and was asked again for a
description given with ``-m``. The wizard is driven here as a person would:
keystrokes into the terminal of a real ``javia publish`` process, against a
real server.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

from javia_devtools.demo import example_app_dir
from shared_helpers import server_process

API_KEY = "wizard-admin-key-0123456789abcdef"
ENTER, DOWN = "\r", "\x1b[B"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class Terminal:
    """A process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.controller, worker = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=worker, stdout=worker, stderr=worker, env=env, close_fds=True
        )
        os.close(worker)
        self.screen = ""

    def expect(self, text: str, timeout: float = 30) -> str:
        """Read until ``text`` appears in the output (escape sequences removed)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never appeared; the terminal shows:\n{self.screen}"
            ready, _, _ = select.select([self.controller], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.controller, 65536)
                except OSError:  # the process ended
                    chunk = b""
                if not chunk:
                    assert text in self.screen, f"{text!r} never appeared:\n{self.screen}"
                self.screen += _ESCAPES.sub("", chunk.decode("utf-8", "replace"))
        return self.screen

    def type(self, keys: str) -> None:
        os.write(self.controller, keys.encode())
        time.sleep(0.2)  # let prompt_toolkit read one key sequence at a time

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.controller)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server where v7.2.0 is published, and an app directory whose VERSION says v7.1.0.

    One for the module: no test here publishes (each ends before the upload).
    """
    tmp_path = tmp_path_factory.mktemp("wizard")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    environment.update(TERM="xterm", COLUMNS="120", LINES="40", HOME=str(tmp_path))
    javia = [sys.executable, "-m", "javia_cli.main"]
    app_dir = tmp_path / "pi_client"
    shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    keys = tmp_path / "keys"
    subprocess.run([*javia, "keys", "generate", "--output", str(keys)], env=environment, check=True)
    with server_process(tmp_path, API_KEY) as (url, _log):
        common = ["--server", url, "--api-key", API_KEY, "--key", str(keys / "javia-signing.pem")]
        (app_dir / "VERSION").write_text("v7.1.0\n")
        subprocess.run(
            [
                *javia,
                "publish",
                str(app_dir),
                "--version",
                "v7.2.0",
                "--type",
                "scheduled",
                *common,
            ],
            env=environment,
            check=True,
            capture_output=True,
        )
        (app_dir / "VERSION").write_text("v7.1.0\n")  # another operator's checkout, say
        yield [*javia, "publish", str(app_dir), *common], environment


def test_the_wizard_suggests_above_the_server_and_refuses_a_low_version_at_the_prompt(
    published,  # type: ignore[no-untyped-def]
) -> None:
    command, environment = published
    terminal = Terminal(command, environment)
    screen = terminal.expect("Version to publish")
    assert "v7.2.0 is published" in terminal.expect("other")
    assert "v7.2.1" in screen and "v7.1.1" not in screen
    terminal.type(DOWN * 3 + ENTER)  # other…
    terminal.expect("Version (vX.Y.Z)")
    terminal.type("v7.1.1")
    terminal.expect("v7.1.1 is not above v7.2.0, already published")
    assert "Description" not in terminal.screen  # refused before any other question
    terminal.type("\x03")  # Ctrl-C
    assert terminal.close() != 0


def test_a_given_version_and_description_are_not_asked_again(published) -> None:  # type: ignore[no-untyped-def]
    command, environment = published
    terminal = Terminal([*command, "--version", "v7.3.0", "-m", "fixes"], environment)
    terminal.expect("Update type")
    terminal.type(ENTER)  # scheduled
    terminal.expect("System packages")
    terminal.type(ENTER)
    terminal.expect("Publish?")
    terminal.type("n" + ENTER)
    terminal.expect("cancelled, nothing published")
    assert terminal.close() == 1
    assert "Version to publish" not in terminal.screen
    assert "Description" not in terminal.screen
    assert "description: fixes" in terminal.screen


def test_a_given_version_too_low_is_refused_before_any_question(published) -> None:  # type: ignore[no-untyped-def]
    command, environment = published
    terminal = Terminal([*command, "--version", "v7.1.1"], environment)
    terminal.expect("v7.1.1 is not above v7.2.0, already published")
    assert terminal.close() == 1
    assert "Update type" not in terminal.screen
