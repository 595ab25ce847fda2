"""Example voice-assistant application used by ``javia demo`` and the tests.

It stands in for the real assistant: it starts, announces which release it
runs, and idles until it is stopped. It reads its version from ``VERSION`` in
its working directory (the release directory the agent started it in) and, when
``JAVIA_APP_STATUS_FILE`` is set, writes ``{"version", "pid", "started_at"}``
there so a test or the demo can see which release is really running.

Set ``JAVIA_EXAMPLE_FAIL=1`` in a release's environment, or ship a file named
``FAIL`` in the release, to make it exit with status 1 right after starting
(an unhealthy release, for rollback demonstrations). Ship a file named
``CRASH_AFTER`` holding a number of seconds to make it run that long, then exit
with status 1 (a release that passes the agent's health check and crashes
later: a post-install regression, docs/rollouts.md). Ship a file named
``SAY`` to have its text printed at start (what a real application might log:
the failure-report tests use it to print a secret that must be redacted).
"""

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

running = True


def _stop(signum: int, frame: FrameType | None) -> None:
    global running
    running = False


def main() -> int:
    release = Path.cwd()
    version = (release / "VERSION").read_text(encoding="ascii").strip()
    if os.environ.get("JAVIA_EXAMPLE_FAIL") == "1" or (release / "FAIL").exists():
        print(f"assistant {version}: failing on purpose", flush=True)
        return 1
    status_file = os.environ.get("JAVIA_APP_STATUS_FILE")
    if status_file:
        record = {
            "version": version,
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "release_dir": str(release),
        }
        temporary = Path(status_file + ".tmp")
        temporary.write_text(json.dumps(record), encoding="utf-8")
        os.replace(temporary, status_file)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"assistant {version} listening (pid {os.getpid()})", flush=True)
    say = release / "SAY"
    if say.exists():
        print(say.read_text(encoding="utf-8"), flush=True)
    crash_file = release / "CRASH_AFTER"
    crash_at = (
        time.monotonic() + float(crash_file.read_text(encoding="ascii"))
        if crash_file.exists()
        else None
    )
    while running:
        if crash_at is not None and time.monotonic() >= crash_at:
            print(f"assistant {version}: crashing on purpose", flush=True)
            return 1
        time.sleep(0.2)
    print(f"assistant {version} stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
