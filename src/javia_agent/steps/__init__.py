"""One module per update step; each runs in the state it is named after and returns an event.

A step is a function ``run(installer, run) -> Event``: it does its work for
the update in ``run`` (:class:`~javia_agent.steps.common.Run`) with the
installer's configuration and collaborators, and says what happened. It never
decides where the update goes next and never saves a state of its own
(besides its counters): :data:`javia_agent.flow.FLOW` decides, the driver
(:mod:`javia_agent.driver`) saves.

- :mod:`~javia_agent.steps.download`: manifest, signature, payload (resumable)
- :mod:`~javia_agent.steps.verify`: payload size and SHA-256 against the signed manifest
- :mod:`~javia_agent.steps.stage`: extract into ``releases/<version>``, environments, apt, setup
- :mod:`~javia_agent.steps.switch`: stop, point ``current`` at the new release, start
- :mod:`~javia_agent.steps.health`: the new release must stay up, the health command pass
- :mod:`~javia_agent.steps.commit`: keyring changes, pruning, the download removed
- :mod:`~javia_agent.steps.rollback`: ``current`` back to the previous release, restarted
- :mod:`~javia_agent.steps.report`: the final report queued
"""
