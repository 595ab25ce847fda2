"""The ``javia`` console script: wires the command groups of every package together.

The one package allowed to import them all: the agent's group
(:mod:`javia_agent.cli`), the server's and operator's groups
(:mod:`javia_updates.cli`) and the dev tools' (:mod:`javia_devtools.cli`).
None of those imports this package or each other, so the package graph has
no cycle; ``javia agent ...`` imports the agent's group alone.
"""
