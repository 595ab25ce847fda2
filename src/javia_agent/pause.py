"""TEST HOOK: named pause points where the crash tests SIGKILL a real agent.

The installer calls its ``checkpoint`` with each state name right after that
state is saved, and with ``staging.extracted``, ``switching.stopped`` and
``switching.linked``. On a device the checkpoint does nothing; with
``JAVIA_AGENT_PAUSE_AT`` set (tests only) it stops there, see
:func:`pause_hook_from_environment`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from javia_agent._fs import atomic_write

__all__ = ["PAUSE_AT_ENV", "PAUSE_SECONDS_ENV", "no_checkpoint", "pause_hook_from_environment"]

logger = logging.getLogger(__name__)

#: Test hook: comma-separated pause points (state names, or ``staging.extracted``,
#: ``switching.stopped``, ``switching.linked``). Never set on a device.
PAUSE_AT_ENV = "JAVIA_AGENT_PAUSE_AT"
#: How long the test hook pauses, in seconds (default 600).
PAUSE_SECONDS_ENV = "JAVIA_AGENT_PAUSE_SECONDS"


def no_checkpoint(point: str) -> None:
    """The checkpoint of a device: does nothing."""
    return None


def pause_hook_from_environment(
    state_dir: Path, environ: Mapping[str, str] | None = None
) -> Callable[[str], None]:
    """TEST HOOK for the crash tests; a no-op unless ``JAVIA_AGENT_PAUSE_AT`` is set.

    The crash tests kill a real agent process with SIGKILL at each step of an
    update. Some steps last microseconds; with ``JAVIA_AGENT_PAUSE_AT=name``
    the agent, on reaching the pause point ``name`` (a state name, right after
    that state was saved; or ``staging.extracted``, ``switching.stopped``,
    ``switching.linked``), writes ``<state_dir>/paused-at-<name>`` (holding
    its pid) and waits — until the test deletes that file, or for
    ``JAVIA_AGENT_PAUSE_SECONDS`` (default 600) — giving the test a
    deterministic moment to kill it or to change the world around it (stop
    the server, say) before letting it go on. The variables are read once,
    here, and only matter when set: a device never sets them.

    Returns:
        The checkpoint callable for :attr:`Installer.checkpoint`.
    """
    env = os.environ if environ is None else environ
    names = env.get(PAUSE_AT_ENV, "")
    points = {name.strip() for name in names.split(",") if name.strip()}
    if not points:
        return no_checkpoint
    seconds = float(env.get(PAUSE_SECONDS_ENV, "600"))
    directory = Path(state_dir)

    def pause(point: str) -> None:
        if point not in points:
            return
        logger.warning("test hook %s: pausing at %s for %g s", PAUSE_AT_ENV, point, seconds)
        marker = directory / f"paused-at-{point}"
        atomic_write(marker, f"{os.getpid()}\n".encode())
        deadline = time.monotonic() + seconds
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        marker.unlink(missing_ok=True)
        logger.warning("test hook %s: going on after %s", PAUSE_AT_ENV, point)

    return pause
