"""Installing a release's signed system packages with apt (DESIGN.md sections 3 and 7).

The names come from the signed manifest (the server cannot add any) and are
checked again here against Debian policy 5.6.1
(:func:`javia_core.manifest.validate_apt_package`) before they reach a
command line, always after ``--`` so that no name can be read as an option.

apt and dpkg refuse to run while another package manager holds the dpkg
frontend lock (``/var/lib/dpkg/lock-frontend``, an ``fcntl`` write lock): on
a Raspberry Pi that is typically ``unattended-upgrades`` at boot.
:func:`wait_for_dpkg_lock` waits for it to be free, up to a time limit, and
when it gives up names the holder from ``/proc/locks`` (pid and command). The
lock is only probed, never kept: apt takes it itself, and if another process
grabs it in between, apt's "Could not get lock" failure sends the installer
back to waiting within the same limit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from javia_agent.errors import InstallError, PackageManagerLockError
from javia_core.errors import ManifestError

__all__ = [
    "DPKG_FRONTEND_LOCK",
    "apt_download_argv",
    "apt_install_argv",
    "apt_lock_failure",
    "lock_holder",
    "wait_for_dpkg_lock",
]

DPKG_FRONTEND_LOCK = Path("/var/lib/dpkg/lock-frontend")
_LOCK_MESSAGES = (
    "could not get lock",
    "unable to acquire the dpkg frontend lock",
    "is locked by another process",
)


def apt_install_argv(apt_command: Sequence[str], packages: Sequence[str]) -> list[str]:
    """The full apt command line: ``apt_command``, ``--``, then the package names.

    Args:
        apt_command: the configured prefix, e.g. ``["apt-get", "install",
            "--yes", "--no-install-recommends", "--"]``; ``--`` is added when
            it does not end with it.
        packages: the manifest's ``system_packages`` (``name`` or ``name=version``).

    Raises:
        InstallError: a name breaks Debian policy 5.6.1 (defence in depth: the
            signed manifest was checked already), or ``--`` appears in the
            middle of ``apt_command``.
    """
    # Imported here: javia_core.manifest loads cryptography, which an idle agent never needs.
    from javia_core.manifest import validate_apt_package

    prefix = list(apt_command)
    if not prefix:
        raise InstallError(
            "apt_command is empty: expected e.g. ['apt-get', 'install', '--yes', '--']"
        )
    if "--" in prefix[:-1]:
        raise InstallError("apt_command may hold '--' only as its last element")
    for name in packages:
        try:
            validate_apt_package(name)
        except ManifestError as error:
            raise InstallError(str(error)) from None
    if prefix[-1] != "--":
        prefix.append("--")
    return [*prefix, *packages]


def apt_download_argv(apt_command: Sequence[str], packages: Sequence[str]) -> list[str]:
    """:func:`apt_install_argv` with ``--download-only`` before ``--``: fetch, install nothing.

    The packages land in apt's cache (``/var/cache/apt/archives``); the real
    install later finds them there (staging ahead of the window).

    Raises:
        InstallError: as :func:`apt_install_argv`.
    """
    argv = apt_install_argv(apt_command, packages)
    split = argv.index("--")
    return [*argv[:split], "--download-only", *argv[split:]]


def apt_lock_failure(output: str) -> bool:
    """Whether apt's output says it failed because the dpkg lock was taken."""
    lowered = output.lower()
    return any(message in lowered for message in _LOCK_MESSAGES)


def _device_numbers(st_dev: int) -> tuple[int, int]:
    return os.major(st_dev), os.minor(st_dev)


def lock_holder(lock_path: Path, *, proc: Path = Path("/proc")) -> str | None:
    """Who holds an ``fcntl`` lock on ``lock_path``, from ``/proc/locks``.

    Returns:
        ``"pid 1234 (unattended-upgr)"``, ``"an open file description lock"``
        when the kernel does not say (OFD locks), or ``None`` when nobody
        holds one or the kernel does not tell.
    """
    try:
        info = os.stat(lock_path)
        table = (proc / "locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    wanted = (*_device_numbers(info.st_dev), info.st_ino)
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        for index, token in enumerate(fields):
            parts = token.split(":")
            if len(parts) != 3:
                continue
            try:
                found = (int(parts[0], 16), int(parts[1], 16), int(parts[2]))
            except ValueError:
                continue
            if found != wanted:
                continue
            try:
                pid = int(fields[index - 1])
            except (ValueError, IndexError):
                return "another process"
            if pid <= 0:
                return "an open file description lock"
            try:
                command = (proc / str(pid) / "comm").read_text().strip()
            except OSError:
                command = "unknown command"
            return f"pid {pid} ({command})"
    return None


def wait_for_dpkg_lock(
    lock_path: Path = DPKG_FRONTEND_LOCK,
    *,
    timeout_seconds: float,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_seconds: float = 1.0,
    keepalive: Callable[[], object] | None = None,
) -> None:
    """Return once nobody holds the dpkg lock; wait up to ``timeout_seconds``.

    The lock is probed with a non-blocking ``fcntl`` write lock that is
    released at once. A missing lock file (no dpkg) or one this process may
    not open (not root: apt will say so itself) returns immediately.

    Args:
        lock_path: the lock file (``/var/lib/dpkg/lock-frontend``; tests pass a
            temporary file).
        timeout_seconds: how long to wait, in seconds on ``monotonic``.
        monotonic: the clock the limit is measured on.
        sleep: waits between probes.
        poll_seconds: time between probes.
        keepalive: called between probes (the systemd watchdog).

    Raises:
        PackageManagerLockError: still held after ``timeout_seconds``; the
            message names the holder when the kernel says who it is.
    """
    try:
        descriptor = os.open(lock_path, os.O_RDWR)
    except OSError:
        return
    try:
        deadline = monotonic() + timeout_seconds
        while True:
            try:
                fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    return  # a file system without locks: let apt decide
            else:
                fcntl.lockf(descriptor, fcntl.LOCK_UN)
                return
            if monotonic() >= deadline:
                holder = lock_holder(lock_path) or "another process"
                raise PackageManagerLockError(
                    f"the dpkg lock {lock_path} is still held by {holder} after "
                    f"{timeout_seconds:g} s: cannot install system packages now; will try again later"
                )
            if keepalive is not None:
                keepalive()
            sleep(max(0.0, min(poll_seconds, deadline - monotonic())))
    finally:
        os.close(descriptor)
