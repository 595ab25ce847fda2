"""COMMITTING: the new release is good; keyring changes, pruning, then the point of no return.

The step applies the package's signed keyring changes (before the download
is deleted: a crash after this finds them applied, idempotent; a crash
before finds the metadata still on disk), prunes old releases and removes
the download. The :attr:`~javia_agent.flow.Edge.COMPLETE` edge then writes
the installed version and the final status together (Mender's commit,
STYLE.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from javia_agent.flow import Event
from javia_agent.state import UpdateRecord, UpdateState
from javia_agent.steps.common import Run
from javia_core.errors import JaviaError
from javia_core.models import UpdateStatus

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["complete", "run"]

logger = logging.getLogger(__name__)


def run(installer: Installer, run: Run) -> Event:
    """Apply keyring changes, prune old releases, remove the download."""
    record = run.record
    _apply_keyring_changes(installer, record)
    installer.releases.prune(keep_previous=record.previous_version)
    installer.releases.remove_download(record)
    return Event.SUCCESS


def complete(installer: Installer, run: Run) -> None:
    """The COMPLETE edge: installed version and final status written in one save."""
    record = run.record
    installer.persist(
        run,
        run.state.model_copy(
            update={
                "current_version": record.version,
                "attention": None,  # a healthy release runs and is committed again
                "update": record.model_copy(
                    update={"state": UpdateState.REPORTING, "final_status": UpdateStatus.COMPLETED}
                ),
            }
        ),
    )
    logger.info("committed %s", record.version)


def _apply_keyring_changes(installer: Installer, record: UpdateRecord) -> None:
    """Apply the committed package's signed keyring changes (key rotation, docs/security.md).

    The package's signature is verified against the keyring again and its
    ``keyring`` changes applied
    (:func:`javia_agent.keyring.apply_package_keyring_changes`; idempotent,
    so crash recovery may run it twice). The release is good whatever
    happens here: a refusal is logged, never rolled back.
    """
    keyring_dir = installer.keyring_dir
    if keyring_dir is None:
        return
    from javia_agent.delta_download import read_metadata
    from javia_agent.keyring import apply_package_keyring_changes

    try:  # the archive may be absent: a delta download keeps the metadata only
        manifest_bytes, signature_bytes = read_metadata(installer.package_dir(record))
        update = apply_package_keyring_changes(keyring_dir, manifest_bytes, signature_bytes)
    except (JaviaError, OSError) as error:
        logger.error("keyring changes of %s not applied: %s", record.version, error)
        return
    if update.changed:
        logger.info(
            "keyring after %s: added %s, retired %s",
            record.version,
            ", ".join(update.added) or "none",
            ", ".join(update.retired) or "none",
        )
