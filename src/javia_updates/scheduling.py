"""Re-exports :mod:`javia_core.scheduling`, where the update-type rules live.

Kept because DESIGN.md section 4 names ``javia_updates.scheduling`` (and its
``next_window_start``) as a public contract; new code imports
:mod:`javia_core.scheduling`.
"""

from javia_core.scheduling import *  # noqa: F403 - the whole public surface, by its __all__
from javia_core.scheduling import __all__ as __all__
