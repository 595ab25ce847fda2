"""The operator's web dashboard served by ``javia server`` at ``/dashboard`` (docs/dashboard.md).

Plain HTML, CSS and JavaScript shipped in the package (``static/``), no build
step and nothing fetched from elsewhere; sessions are signed cookies
(:mod:`.sessions`), the data comes from small JSON endpoints (:mod:`.views`)
the page polls.
"""

from __future__ import annotations

from javia_updates.dashboard.app import DASHBOARD_PATH, create_dashboard, install_dashboard

__all__ = ["DASHBOARD_PATH", "create_dashboard", "install_dashboard"]
