"""javia's pure core: the rules and formats every part shares.

Versions (:mod:`~javia_core.versioning`), the signed manifest and its
verification (:mod:`~javia_core.manifest`), reading public keys and package
directories (:mod:`~javia_core.keys`, :mod:`~javia_core.package_reader`),
when a device may install (:mod:`~javia_core.scheduling`), the wire models
(:mod:`~javia_core.models`) and the input rules they apply
(:mod:`~javia_core.input_rules`), how update progress may move
(:mod:`~javia_core.status_rules`) and the one error hierarchy
(:mod:`~javia_core.errors`).

The agent (``javia_agent``), the server and operator tools (``javia_updates``)
and the dev tools (``javia_devtools``) import this package, never each other.
It imports no network, database or terminal library: only pydantic,
pydantic-settings, cryptography and the time-zone database
(tests/test_package_boundaries.py enforces it).
"""
