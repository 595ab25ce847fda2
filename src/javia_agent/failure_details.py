"""The structured failure a ``failed`` or ``rolled_back`` report carries (issue 15).

A step that fails leaves :class:`FailureEvidence` on the run (the class, the
failing command's exit status and output, the health command's output, the
application's exit); :func:`build` turns it, with the application's last output
lines, into a :class:`~javia_core.failures.FailureDetails`: secrets redacted
(the application's environment values and the rules of
:func:`javia_core.failures.redact`), bounded to 64 KiB compressed. The
application's output comes from ``app.log`` (command mode) or the journal of
its unit (``journalctl --unit UNIT --lines 200 --output cat``, systemd mode).
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from javia_agent.errors import CommandFailedError
from javia_agent.retry_policy import failure_class_of
from javia_core.failures import FailureClass, FailureDetails, fit_failure

if TYPE_CHECKING:
    from javia_agent.installer import Installer
    from javia_agent.steps.common import Run

__all__ = ["FailureEvidence", "application_output", "build", "evidence_of_error", "stored"]

logger = logging.getLogger(__name__)

#: How much of the application's output is read, in bytes and lines.
OUTPUT_BYTES = 64 * 1024
OUTPUT_LINES = 200
_JOURNAL_TIMEOUT_SECONDS = 10.0


@dataclass
class FailureEvidence:
    """What a failing step saw; see :class:`~javia_core.failures.FailureDetails`."""

    failure_class: FailureClass
    exit_code: int | None = None
    signal: int | None = None
    output: str | None = None
    output_source: str | None = None
    health_output: str | None = None
    with_application_output: bool = False


def evidence_of_error(error: BaseException, state: str) -> FailureEvidence:
    """The evidence of an error raised before the switch (or by the health command)."""
    failure_class = failure_class_of(error, state)
    if isinstance(error, CommandFailedError):
        code, signal = split_exit_status(error.exit_code)
        if error.kind == "health":
            return FailureEvidence(
                failure_class,
                code,
                signal,
                health_output=error.output,
                with_application_output=True,
            )
        return FailureEvidence(failure_class, code, signal, error.output, error.kind)
    return FailureEvidence(failure_class)


def split_exit_status(status: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal) of an exit status that is a code, or minus the signal."""
    if status is None:
        return None, None
    return (None, -status) if status < 0 else (status, None)


def application_output(installer: Installer) -> tuple[str | None, str | None]:
    """The application's last output lines and where they come from, or (None, None)."""
    log_file = getattr(installer.service, "log_file", None)
    if isinstance(log_file, Path):
        return _file_tail(log_file), "app_log"
    unit = getattr(installer.service, "unit", None)
    if isinstance(unit, str):
        argv = ["journalctl", "--unit", unit, "--lines", str(OUTPUT_LINES), "--output", "cat"]
        try:
            result = subprocess.run(
                [*argv, "--no-pager"],
                capture_output=True,
                timeout=_JOURNAL_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            logger.info("cannot read the application's journal: %s", error)
            return None, None
        if result.returncode == 0:
            text = result.stdout[-OUTPUT_BYTES:].decode("utf-8", "replace")
            return text, "journal"
    return None, None


def _file_tail(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            file.seek(max(0, size - OUTPUT_BYTES))
            data = file.read(OUTPUT_BYTES)
    except OSError:
        return None
    lines = data.decode("utf-8", "replace").splitlines()
    if len(data) == OUTPUT_BYTES and lines:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-OUTPUT_LINES:])


def build(installer: Installer, run: Run, reason: str) -> FailureDetails:
    """The failure of ``run`` ending with ``reason`` (from its evidence, else its state)."""
    record = run.record
    evidence = run.evidence or FailureEvidence(failure_class_of(None, str(record.state)))
    output, source = evidence.output, evidence.output_source
    if evidence.with_application_output and output is None:
        output, source = application_output(installer)
    return fit_failure(
        evidence.failure_class,
        str(record.state),
        reason,
        exit_code=evidence.exit_code,
        signal=evidence.signal,
        output_tail=output,
        output_source=source,
        health_output_tail=evidence.health_output,
        secrets=list(installer.app_env.values()),
    )


def stored(value: dict[str, Any] | None) -> FailureDetails | None:
    """A failure saved in ``state.json``, or None (absent or no longer valid)."""
    if value is None:
        return None
    try:
        return FailureDetails.model_validate(value)
    except ValueError:
        return None
