"""Dev tools: the demo fleet, the fleet simulator, the example app and :class:`ServerProcess`.

Not installed on devices or servers in production: the simulator needs the
``javia[sim]`` extra (aiohttp). This package may import ``javia_core``,
``javia_updates`` (to run a real server and the operator's client) and start
``javia agent`` processes; nothing in ``javia_core``, ``javia_agent`` or
``javia_updates`` imports it.
"""
