"""A throwaway PostgreSQL cluster for tests (DESIGN.md section 5).

The backend conformance tests run against a real PostgreSQL server, started
here from the distribution's server binaries (``/usr/lib/postgresql/<major>/bin``,
the highest major version wins) into a temporary directory:

- ``initdb`` with a bootstrap superuser ``postgres`` (trusted on the Unix
  socket only) and fsync off, since the data is thrown away;
- ``pg_ctl start`` on a free TCP port on 127.0.0.1, with the Unix socket in the
  temporary directory (never ``/var/run/postgresql``), so it cannot collide
  with a system cluster or another test process;
- a login role ``javia`` with a random password and *no* superuser rights
  (like the role Supabase hands out) and a database ``javia_test`` it owns;
- ``pg_ctl stop -m immediate`` and the directory removed at the end.

PostgreSQL refuses to run as root, and CI runs as root: then every server
binary runs as the unprivileged ``postgres`` user through ``runuser -u
postgres --``, in a temporary directory chowned to that user under a parent
it can traverse (``/tmp``, not a 0700 home directory).

Under pytest-xdist every worker process starts its own cluster (about a
second), which keeps workers independent: no shared state, no lock files.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "POSTGRES_BINARIES_ROOT",
    "PostgresCluster",
    "PostgresStartError",
    "PostgresUnavailable",
    "find_server_binaries",
    "report_unavailable",
    "require_server_binaries",
    "start_cluster",
]

#: Where Debian and Ubuntu install one directory of server binaries per major version.
POSTGRES_BINARIES_ROOT = Path("/usr/lib/postgresql")
#: The unprivileged system user the server runs as when the tests run as root.
SERVER_USER = "postgres"
APP_ROLE = "javia"
APP_DATABASE = "javia_test"
_SUPERUSER = "postgres"
_COMMAND_TIMEOUT_SECONDS = 120
_START_ATTEMPTS = 5
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
_INSTALL_HINT = (
    "install the Debian package 'postgresql' (apt-get install postgresql), "
    "which puts them in /usr/lib/postgresql/<major>/bin"
)


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a test cluster: binaries, user or directory missing."""


class PostgresStartError(RuntimeError):
    """A step of creating, starting or stopping the cluster failed (a bug or a broken install)."""


def _major_version(directory: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in directory.name.split("."))
    except ValueError:
        return ()


def find_server_binaries(root: Path = POSTGRES_BINARIES_ROOT) -> Path | None:
    """The ``bin`` directory of the highest PostgreSQL major version under ``root``.

    Versions compare numerically (``16`` > ``15`` > ``9.6``); a directory that
    lacks any of ``initdb``, ``pg_ctl``, ``postgres`` or ``psql`` is ignored.

    Returns:
        ``root/<major>/bin``, or None when no complete set of binaries exists.
    """
    candidates = []
    for version_dir in root.glob("*"):
        version = _major_version(version_dir)
        bin_dir = version_dir / "bin"
        if version and all(os.access(bin_dir / name, os.X_OK) for name in _REQUIRED_BINARIES):
            candidates.append((version, bin_dir))
    return max(candidates)[1] if candidates else None


def report_unavailable(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the requesting test, or fail it when running in CI (``CI=true``).

    CI must install the server binaries (``.ci/run`` does), so there a missing
    PostgreSQL is an error, never a silently skipped backend.

    Raises:
        pytest.fail.Exception: ``CI`` is ``true``/``1``/``yes`` (any case).
        pytest.skip.Exception: otherwise.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def require_server_binaries(root: Path = POSTGRES_BINARIES_ROOT) -> Path:
    """:func:`find_server_binaries`, or :func:`report_unavailable` (skip, or fail in CI)."""
    bin_dir = find_server_binaries(root)
    if bin_dir is None:
        report_unavailable(f"no PostgreSQL server binaries in {root}/*/bin: {_INSTALL_HINT}")
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _traversable_by_others(directory: Path) -> bool:
    """Whether a user other than the owner can reach ``directory`` (o+x on every ancestor)."""
    for part in (directory, *directory.parents):
        try:
            if not os.stat(part).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _parent_for_server_user() -> Path:
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")):
        if candidate.is_dir() and _traversable_by_others(candidate.resolve()):
            return candidate.resolve()
    raise PostgresUnavailable(
        f"no temporary directory the {SERVER_USER!r} user can reach: {tempfile.gettempdir()}, "
        "/tmp and /var/tmp are not traversable by other users"
    )


def _clean_environment() -> dict[str, str]:
    """This process's environment without ``PG*`` variables, so none redirect a tool."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment["LC_ALL"] = "C"
    return environment


@dataclass
class PostgresCluster:
    """A running throwaway cluster; build it with :func:`start_cluster`.

    Attributes:
        bin_dir: the server binaries used.
        base_dir: temporary directory holding ``data/``, ``socket/`` and ``server.log``.
        port: TCP port on 127.0.0.1.
        password: the ``javia`` role's password.
        run_as: system user the binaries run as (None: this process's user).
    """

    bin_dir: Path
    base_dir: Path
    port: int
    password: str = field(repr=False)
    run_as: str | None
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket."""
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.base_dir / "server.log"

    def url(self, database: str = APP_DATABASE) -> str:
        """SQLAlchemy URL of ``database`` as the ``javia`` role, over TCP with psycopg 3."""
        return f"postgresql+psycopg://{APP_ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int:
        """Process id of the running server, from the first line of ``postmaster.pid``."""
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def run(
        self, program: str, *arguments: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as :attr:`run_as` when set, in :attr:`base_dir`.

        Raises:
            PostgresStartError: ``check`` and the program exited non-zero (the
                message holds its output), or it ran longer than 120 s.
        """
        return _run(self.bin_dir, self.run_as, self.base_dir, program, arguments, check=check)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement as the superuser over the Unix socket; its output."""
        return self.run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", _SUPERUSER,
            "-d", database, "-c", statement,
        ).stdout.strip()  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by the ``javia`` role; its SQLAlchemy URL.

        Raises:
            ValueError: ``name`` is not a lower-case SQL identifier.
        """
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(
                f"database name {name!r}: expected a lower-case identifier such as javia_test_2"
            )
        self.sql(f"CREATE DATABASE {name} OWNER {APP_ROLE}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``) and delete its files.

        Safe to call twice, and after a failed start. When ``pg_ctl`` cannot stop
        it, the postmaster is killed by its recorded pid.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                result = self.run(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False
                )
                if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        os.kill(self.postmaster_pid(), signal.SIGKILL)
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _run(
    bin_dir: Path,
    run_as: str | None,
    cwd: Path,
    program: str,
    arguments: Sequence[str],
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    command = [str(bin_dir / program), *arguments]
    if run_as is not None:
        command = ["runuser", "-u", run_as, "--", *command]
    try:
        result = subprocess.run(
            command,
            check=False,
            cwd=cwd,
            env=_clean_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise PostgresStartError(
            f"{program} did not finish within {_COMMAND_TIMEOUT_SECONDS} s"
        ) from None
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise PostgresStartError(f"{program} exited with {result.returncode}: {output}")
    return result


def _server_user() -> tuple[str | None, int | None, int | None]:
    """(user name, uid, gid) to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None, None, None
    import pwd

    if shutil.which("runuser") is None:
        raise PostgresUnavailable(
            "running as root needs runuser (util-linux) to drop to an unprivileged user"
        )
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, but there is no unprivileged {SERVER_USER!r} user to run the server "
            "as (the Debian 'postgresql' package creates it)"
        ) from None
    return SERVER_USER, entry.pw_uid, entry.pw_gid


def _make_owned_dir(path: Path, uid: int | None, gid: int | None) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)


def _log_tail(log_file: Path) -> str:
    try:
        return log_file.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no server log)"


def start_cluster(bin_dir: Path) -> PostgresCluster:
    """Create and start a cluster with the binaries in ``bin_dir``; see the module docstring.

    Returns:
        The running cluster, with the ``javia`` role and the ``javia_test``
        database created. The caller must call :meth:`PostgresCluster.stop`.

    Raises:
        PostgresUnavailable: running as root without an unprivileged
            ``postgres`` user or ``runuser``, or no temporary directory that
            user can reach.
        PostgresStartError: a step failed; the message holds the program's
            output or the server log.
    """
    run_as, uid, gid = _server_user()
    parent = _parent_for_server_user() if run_as is not None else None
    base_dir = Path(tempfile.mkdtemp(prefix="javia-pg-", dir=parent))
    cluster = PostgresCluster(
        bin_dir, base_dir, port=0, password=secrets.token_hex(16), run_as=run_as
    )
    try:
        _make_owned_dir(base_dir, uid, gid)
        _make_owned_dir(cluster.socket_dir, uid, gid)
        password_file = base_dir / "superuser-password"
        password_file.write_text(secrets.token_hex(16) + "\n")
        if uid is not None and gid is not None:
            os.chown(password_file, uid, gid)
        cluster.run(
            "initdb", "-D", str(cluster.data_dir), "-U", _SUPERUSER, f"--pwfile={password_file}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-sync",
        )  # fmt: skip
        password_file.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{cluster.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        with open(cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as config:
            config.write("\n# throwaway test cluster\n")
            config.writelines(f"{name} = {value}\n" for name, value in settings.items())
        _start_on_free_port(cluster)
        cluster.sql(
            f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD '{cluster.password}'"
        )
        cluster.sql(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_on_free_port(cluster: PostgresCluster) -> None:
    """Start the server, retrying on another port if one was taken in between."""
    for _attempt in range(_START_ATTEMPTS):
        cluster.port = _free_port()
        result = cluster.run(
            "pg_ctl", "-D", str(cluster.data_dir), "-l", str(cluster.log_file),
            "-o", f"-p {cluster.port}", "-w", "-t", "60", "start",
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return
        log = _log_tail(cluster.log_file)
        if "could not bind" not in log and "already in use" not in log:
            raise PostgresStartError(
                f"pg_ctl start failed ({result.returncode}): {(result.stdout + result.stderr).strip()}\n"
                f"server log:\n{log}"
            )
        # Another process took the port between probing and binding: try another.
    raise PostgresStartError(
        f"no free port after {_START_ATTEMPTS} attempts:\n{_log_tail(cluster.log_file)}"
    )
