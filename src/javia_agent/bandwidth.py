"""The agent's download rate limit: its written form and a token bucket (docs/agent.md, "Bandwidth").

``download_rate_limit`` (``javia agent register --download-rate-limit 512KiB``,
or in ``agent.toml``) is a positive number of bytes per second with an
optional unit: ``B``, ``kB`` (1,000), ``KiB`` (1,024), ``MB`` (10**6),
``MiB`` (2**20), optionally followed by ``/s``. :func:`parse_rate` reads it.

:class:`TokenBucket` holds the device to that rate across every request of
a download (archive, objects, patches): bytes are taken after they arrive,
and a bucket in debt sleeps until it is even. It starts empty and holds at
most a quarter of a second of traffic (at least 16 KiB): after an idle
pause a download may burst that much, never more. Clock and sleep are
injected, so tests need no sleeps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

__all__ = ["RATE_FORM", "TokenBucket", "parse_rate"]

#: The expected form, for error messages.
RATE_FORM = (
    "a positive rate in bytes per second with an optional unit B, kB, KiB, MB or MiB, "
    "e.g. 512KiB, 2MiB or 65536"
)

_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*(?:/\s*s)?\s*$")
#: Fastest rate one can write, in bytes per second (10 GiB/s): beyond, a typo.
_MAX_RATE = 10 * 1024**3


def parse_rate(text: str | float) -> float:
    """Bytes per second for ``text`` (``"512KiB"``, ``"2 MB/s"``, ``65536``).

    Units are case-sensitive only as far as ``kB``/``KiB`` differ in meaning:
    ``kb``, ``KB`` and ``kB`` all mean 1,000 bytes; ``kib``, ``KiB`` 1,024.

    Raises:
        ValueError: zero, negative, not a number, an unknown unit, or over
            10 GiB/s; the message shows :data:`RATE_FORM`.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid download rate limit {text!r}: expected {RATE_FORM}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _RATE.match(str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"invalid download rate limit {str(text)[:40]!r}: expected {RATE_FORM}"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    rate = value * _UNITS[unit]
    if not math.isfinite(rate) or rate < 1 or rate > _MAX_RATE:
        raise ValueError(f"invalid download rate limit {text!r}: expected {RATE_FORM}")
    return rate


class TokenBucket:
    """At most ``rate`` bytes per second on average, bursts of at most ``capacity`` bytes.

    Args:
        rate: bytes per second (positive).
        monotonic: seconds on a clock that never jumps.
        sleep: blocks for the given seconds.
        capacity: the burst in bytes (default a quarter second, at least 16 KiB).
    """

    def __init__(
        self,
        rate: float,
        *,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        capacity: float | None = None,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be a positive number of bytes per second")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(16 * 1024, rate / 4))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = 0.0  # starts empty: even the first second stays under the rate
        self._last = monotonic()

    @property
    def chunk_bytes(self) -> int:
        """A read size that keeps waits short: about an eighth of a second of traffic."""
        return max(1024, min(64 * 1024, int(self.rate / 8)))

    def take(self, count: int) -> None:
        """Account for ``count`` bytes just received; sleep while the bucket is in debt."""
        now = self._monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= count
        if self._tokens < 0:
            wait = -self._tokens / self.rate
            self._sleep(wait)
            self._tokens = 0.0
            self._last = self._monotonic()
