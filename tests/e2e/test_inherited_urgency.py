"""Supersession keeps a fix's urgency, proven by its signature (DESIGN.md section 4).

Real server and agent processes: a device holds a pending *instant* v1.1.0
(a security fix) while its agent is down; the operator then publishes a
*scheduled* v1.2.0. When the agent comes back, it installs v1.2.0 at once: the
timing is inherited from v1.1.0, which the server names as evidence and the
device verifies with its keyring. The maintenance window is ~20 h away, so
waiting for it would fail the test.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from javia_devtools.demo import LocalFleet

from .test_update_loop import final_rows, wait_for
from .test_update_types import _fleet, _provision, app_dir  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def test_a_scheduled_release_superseding_a_pending_instant_fix_installs_at_once(
    tmp_path: Path,
    app_dir: Path,  # noqa: F811 - fixture
) -> None:
    # Today's 3 h window closed 30 min ago: the next one opens in ~20.5 h.
    far = datetime.now(UTC) - timedelta(hours=3, minutes=30)
    fleet: LocalFleet = _fleet(tmp_path, JAVIA_WINDOW_START=far.strftime("%H:%M:%S"))
    try:
        (kitchen,) = _provision(fleet, app_dir, [("kitchen", "UTC")])
        # The agent goes down (seen seconds ago, so the instant publish gives it a row).
        assert kitchen.agent is not None
        kitchen.agent.send_signal(signal.SIGTERM)
        kitchen.agent.wait(timeout=20)

        fix = fleet.publish(app_dir, "v1.1.0", "instant", "security fix")
        assert final_rows(fleet, fix.id)[kitchen.device_uuid].status == "pending"
        release = fleet.publish(app_dir, "v1.2.0", "scheduled", "feature release")
        (row,) = final_rows(fleet, release.id).values()
        # Superseded at publish, in the same write (not at the next heartbeat): the
        # release takes the fix's instant timing at once, not its own far window.
        assert row.scheduled_for is not None
        assert row.scheduled_for < datetime.now(UTC), "the fix's instant timing, not the far window"
        superseded = final_rows(fleet, fix.id)[kitchen.device_uuid]
        assert (superseded.status, superseded.error_message) == (
            "superseded",
            "superseded by v1.2.0",
        )

        fleet.start_agent(kitchen)
        done = wait_for(
            lambda: (
                (r := final_rows(fleet, release.id)[kitchen.device_uuid]).status == "completed"
                and r
            ),
            45,
            "v1.2.0 to install at once with the fix's instant timing",
        )
        assert done.completed_at is not None
        assert kitchen.app_status()["version"] == "v1.2.0"
        assert final_rows(fleet, fix.id)[kitchen.device_uuid].status == "superseded"
        log = kitchen.agent_log.read_text(errors="replace")
        assert "proven by the signed instant of the superseded v1.1.0" in log
    finally:
        fleet.stop()
