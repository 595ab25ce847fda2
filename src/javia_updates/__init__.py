"""javia: over-the-air updates for a fleet of Raspberry Pi voice assistants.

This package holds the server side (``server``, ``backends``, ``service``)
and the operator's tools (``cli``, ``packaging``, ``keys``, ``admin_client``).
The pure rules and wire formats it shares with the agent live in
``javia_core``; ``versioning`` and ``scheduling`` here only re-export the
DESIGN.md contracts. ``server`` and ``backends`` need the ``javia[server]``
extra.
"""

__version__ = "0.1.0"
