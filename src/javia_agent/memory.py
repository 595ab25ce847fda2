"""Keep the long-running agent small: what it never imports, and what it gives back.

The agent runs all day on a Raspberry Pi Zero 2 W (512 MiB shared with the
voice assistant); issue 7 sets its idle budget at 40 MB resident
(docs/benchmarks.md, agent idle memory). Two measures live here, both used by
``javia agent run`` only:

- :func:`skip_httpx_command_line`: ``import httpx`` also imports httpx's own
  command line (click, rich's progress bars and syntax highlighting, pygments:
  about 4 MiB) whenever click happens to be installed. A device's install has
  no click (it comes with the server's extras), so httpx falls back to a stub
  there; this makes a development machine behave the same.
- :func:`release_memory`: hand the heap's free pages back to the kernel
  (glibc's ``malloc_trim``) before each sleep, which CPython's allocator does
  not do by itself; after start-up and after an install, collect garbage
  first.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable
from functools import cache

__all__ = ["release_memory", "skip_httpx_command_line"]

logger = logging.getLogger(__name__)

_HTTPX_COMMAND_LINE = "httpx._main"


def skip_httpx_command_line() -> bool:
    """Make ``import httpx`` skip its optional command line (``httpx._main``) in this process.

    httpx imports its command line inside ``try: ... except ImportError``
    and installs a stub ``httpx.main`` instead; a ``None`` entry in
    :data:`sys.modules` is Python's documented way to make that import raise
    :class:`ImportError`. Everything else in httpx is unaffected.

    Returns:
        True if httpx will now skip it; False if httpx was already imported
        (too late to matter, nothing changed).
    """
    if "httpx" in sys.modules:
        return False
    # typeshed types sys.modules as modules only; None is the documented import blocker.
    sys.modules.setdefault(_HTTPX_COMMAND_LINE, None)  # type: ignore[arg-type]
    return sys.modules[_HTTPX_COMMAND_LINE] is None


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on another C library (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The symbols already loaded into this process, the C library's among them.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory(*, collect_garbage: bool = True) -> None:
    """Return the heap's free memory to the kernel where the C library can.

    Args:
        collect_garbage: run a full garbage collection first (about 10 ms for
            the agent's objects on a 2 GHz core: after bursts such as start-up
            or an install, not every heartbeat). The trim alone takes about
            0.1 ms.

    Never raises.
    """
    if collect_garbage:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
