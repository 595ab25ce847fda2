"""javia: over-the-air updates for a fleet of Raspberry Pi voice assistants.

This package holds the server side, the operator's tools and the wire formats
shared with the agent (``javia_agent``). The modules ``versioning``,
``manifest``, ``scheduling``, ``errors`` and ``models`` are pure and importable
on a device; ``server`` and ``backends`` need the ``javia[server]`` extra.
"""

__version__ = "0.1.0"
