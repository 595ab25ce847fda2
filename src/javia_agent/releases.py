"""The release slots on disk: ``releases/<version>``, the ``current`` link, pruning, debris.

RAUC's slots and marks (STYLE.md) in directory form: every installed release
is a complete, verified tree under ``releases/<version>``; ``current`` names
the one that runs and is moved with one atomic rename; a release becomes the
committed one ("good") only after its health check, and older ones are
pruned down to ``keep_releases``. :class:`Releases` is the only code that
creates, removes or re-points these entries, and the only code that removes
an update's download directory or the debris a crash leaves (stale staging
trees, temporary links, other updates' downloads, orphaned Python
environments).

A version becomes a path here only through :meth:`Version.parse`: a name read
from the state file or a link that is not ``vX.Y.Z`` is refused, never
deleted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from javia_agent._fs import fsync_directory, remove_tree
from javia_agent.config import AgentPaths
from javia_agent.environments import PythonEnvironments
from javia_agent.state import UpdateRecord, UpdateSource
from javia_core.versioning import Version

__all__ = ["Releases"]

logger = logging.getLogger(__name__)


class Releases:
    """The ``releases/`` directory and the ``current`` link of one install root.

    Args:
        paths: the agent's on-disk layout.
        keep: previous releases kept besides the current one when pruning.
        python_envs: the releases' shared Python environments, pruned with
            them (``None``: releases have none).
    """

    def __init__(
        self, paths: AgentPaths, *, keep: int = 1, python_envs: PythonEnvironments | None = None
    ) -> None:
        self.paths = paths
        self.keep = keep
        self.python_envs = python_envs

    # -- what runs ----------------------------------------------------------------------

    def current(self) -> str | None:
        """The version ``current`` points to (``releases/<version>``), or ``None``."""
        try:
            target = Path(os.readlink(self.paths.current_link))
        except (FileNotFoundError, OSError):
            return None
        name = target.name
        return name if Version.is_valid(name) else None

    def running_version(self) -> Version | None:
        """The running release's version, the anti-rollback floor; ``None`` if none."""
        name = self.current()
        return Version.parse(name) if name is not None else None

    def directory(self, version: str) -> Path:
        """``releases/<version>`` for a version read from the state file or a link.

        Raises:
            VersionError: ``version`` is not ``vX.Y.Z`` (it never becomes a path).
        """
        return self.paths.release_dir(Version.parse(version))

    def point_current(self, version: str | None) -> None:
        """Make ``current`` point at ``releases/<version>`` atomically (None: remove it).

        A new link is made beside it and renamed over it, then the directory
        is fsynced: after a power loss ``current`` names the old or the new
        release, never neither.
        """
        link = self.paths.current_link
        root = self.paths.install_root
        if version is None:
            if os.path.lexists(link):
                link.unlink()
                fsync_directory(root)
            return
        temporary = root / f"current.tmp-{os.getpid()}"
        if os.path.lexists(temporary):
            temporary.unlink()
        os.symlink(self.directory(version).relative_to(root), temporary)
        os.replace(temporary, link)
        fsync_directory(root)

    # -- removing -----------------------------------------------------------------------

    def discard(self, version: str) -> None:
        """Remove ``releases/<version>`` (a failed, abandoned or half-staged release).

        The release ``current`` points to is never removed.
        """
        if self.current() != version:
            _remove_tree(self.directory(version))
            self.prune_environments()

    def remove_download(self, record: UpdateRecord) -> None:
        """Delete the download directory of a server update (nothing for a package dir)."""
        if record.source == UpdateSource.SERVER and record.update_id is not None:
            _remove_tree(self.paths.download_dir(record.update_id))

    def prune(self, keep_previous: str | None) -> None:
        """Keep the current release and ``keep`` previous ones; delete the rest.

        Args:
            keep_previous: the release that ran before the committed one; it
                is kept first (the next rollback target), whatever its version.
        """
        current = self.current()
        releases = self.paths.releases_dir
        if current is None or not releases.is_dir():
            return
        others = sorted(
            (
                entry.name
                for entry in releases.iterdir()
                if Version.is_valid(entry.name) and entry.name != current
            ),
            key=Version.parse,
            reverse=True,
        )
        if keep_previous in others:
            others.remove(keep_previous)
            others.insert(0, keep_previous)
        for name in others[self.keep :]:
            logger.info("removing old release %s", name)
            _remove_tree(self.directory(name))
        self.prune_environments()

    def remove_debris(self, keep_download: int | None) -> None:
        """Remove stale staging entries, temporary links and other updates' downloads.

        Args:
            keep_download: the update id whose download directory stays (the
                server update in progress), or ``None``.
        """
        releases = self.paths.releases_dir
        if releases.is_dir():
            for entry in releases.iterdir():
                if not Version.is_valid(entry.name):
                    logger.info("removing stale staging entry %s", entry)
                    _remove_tree(entry)
        root = self.paths.install_root
        if root.is_dir():
            for entry in root.glob("current.tmp-*"):
                entry.unlink(missing_ok=True)
        downloads = self.paths.downloads_dir
        keep = str(keep_download) if keep_download is not None else None
        if downloads.is_dir():
            for entry in downloads.iterdir():
                if entry.name != keep:
                    logger.info("removing stale download %s", entry)
                    _remove_tree(entry)
        self.prune_environments()

    def prune_environments(self) -> None:
        """Delete Python environments no release links to (and half-built ones)."""
        if self.python_envs is not None:
            self.python_envs.prune(self.paths.releases_dir)


def _remove_tree(path: Path) -> None:
    """Remove an agent-owned file or tree of any depth (:func:`javia_agent._fs.remove_tree`).

    Never raises: what cannot be removed is logged and tried again by the
    next start-up clean-up, so debris can never stop the agent.
    """
    try:
        remove_tree(path)
    except OSError as error:
        logger.error("cannot remove %s: %s", path, error.strerror or error)
