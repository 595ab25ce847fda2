"""VERIFYING: the payload's size and SHA-256 (or a delta tree's files) against the signed manifest.

The manifest and signature on disk are verified again first (a trusted key,
newer than the running version, the version being installed): trust is
re-established from disk after every restart, never remembered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from javia_agent.flow import Event
from javia_agent.steps.common import Run, pre_switch

if TYPE_CHECKING:
    from javia_agent.installer import Installer

__all__ = ["run"]


def run(installer: Installer, run: Run) -> Event:
    """Verify the metadata, then the payload; see the module docstring."""

    def body() -> None:
        from javia_agent import delta_download, verification
        from javia_core.package_reader import read_package_dir

        package_dir = installer.package_dir(run.record)
        tree = delta_download.assembled_tree(package_dir)
        if tree is not None:  # a delta download: the tree stands in for the archive
            manifest_bytes, signature_bytes = delta_download.read_metadata(package_dir)
        else:
            manifest_bytes, signature_bytes, payload = read_package_dir(package_dir)
        verified = verification.verify_metadata(
            manifest_bytes,
            signature_bytes,
            installer.keyring(),
            current_version=installer.running_version(),
            expected_version=run.record.version,
        )
        run.manifest = verified.manifest
        if tree is not None:
            delta_download.verify_tree(tree, verified.manifest)
        else:
            verification.verify_archive(payload, verified.manifest)

    return pre_switch(installer, run, body)
