"""Python environments for releases: one venv per distinct ``requirements.txt`` (DESIGN.md section 7).

A release that ships a ``requirements.txt`` gets its own Python environment,
built while the old release keeps running (staging, before any downtime):

```
<install_root>/envs/<key>/                 a venv, created at this final path
<install_root>/envs/<key>/.javia-complete  written last: the env is complete
<install_root>/releases/<version>/.venv -> ../../envs/<key>
```

- ``key`` is the SHA-256 of the requirements file's bytes together with the
  interpreter and the pip options (:meth:`PythonEnvironments.key`). Releases
  whose ``requirements.txt`` is byte-identical share one env: the next
  release with unchanged requirements is staged in milliseconds and nothing is
  copied.
- venvs are not relocatable (their scripts and ``pyvenv.cfg`` hold absolute
  paths), so an env is built where it stays and never moved; releases point
  to it with a relative symlink.
- A complete env is never modified: staging a new release cannot break the
  running one, and a rollback finds the old release's env as it was.
- A half-built env (a crash or power cut during ``pip install``) has no
  ``.javia-complete`` marker; it is deleted and built again.
- Envs no release links to are deleted with the releases that used them
  (:meth:`PythonEnvironments.prune`).

The env has no access to the system's site-packages (``python -m venv``
without ``--system-site-packages``). When the agent's own interpreter has pip
22.3 or newer, the env is created without pip and the agent's pip installs
into it (``pip --python``), which saves seconds and megabytes per env on a
Pi; otherwise the env gets its own pip. A requirements file with no
requirements (only blank lines and comments) gives an empty env without
running pip. The application sees the env through ``JAVIA_PYTHON``,
``VIRTUAL_ENV`` and ``PATH`` (:func:`environment_variables`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from javia_agent._fs import atomic_write, fsync_directory, remove_tree
from javia_agent.errors import CommandFailedError, InstallError, command_output

__all__ = [
    "COMPLETE_MARKER",
    "ENV_LINK_NAME",
    "PYTHON_ENV",
    "REQUIREMENTS_NAME",
    "PythonEnvironments",
    "environment_variables",
    "has_requirements",
]

logger = logging.getLogger(__name__)

REQUIREMENTS_NAME = "requirements.txt"
ENV_LINK_NAME = ".venv"
COMPLETE_MARKER = ".javia-complete"
#: The application's interpreter when its release has an env.
PYTHON_ENV = "JAVIA_PYTHON"
_KEY_FORMAT = b"javia-python-env-1"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MIN_PIP_FOR_TARGET_PYTHON = (22, 3)


def has_requirements(text: bytes) -> bool:
    """Whether a requirements file names anything to install (not only blanks and comments)."""
    for raw in text.decode("utf-8", "replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            return True
    return False


def environment_variables(release_dir: Path, base_path: str | None = None) -> dict[str, str]:
    """The variables that put a release's env in front: ``JAVIA_PYTHON``, ``VIRTUAL_ENV``, ``PATH``.

    Args:
        release_dir: the release directory (``releases/<version>``).
        base_path: the ``PATH`` to extend; default the current process's, or
            the usual system directories.

    Returns:
        The three variables pointing into the env the release links to, or
        an empty dict when the release has no env.
    """
    link = Path(release_dir) / ENV_LINK_NAME
    try:
        env = link.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return {}
    python = env / "bin" / "python"
    if not python.exists():
        return {}
    path = base_path if base_path is not None else os.environ.get("PATH") or _DEFAULT_PATH
    return {
        PYTHON_ENV: str(python),
        "VIRTUAL_ENV": str(env),
        "PATH": f"{env / 'bin'}{os.pathsep}{path}" if path else str(env / "bin"),
    }


def _agent_pip_can_target() -> bool:
    """Whether this interpreter's pip can install into another interpreter (``--python``)."""
    try:
        from importlib.metadata import version

        parts = version("pip").split(".")
        return (
            tuple(int(part) for part in parts[:2] if part.isdigit()) >= _MIN_PIP_FOR_TARGET_PYTHON
        )
    except Exception:  # noqa: BLE001 - no pip, or an unreadable version: use the env's own
        return False


@dataclass
class PythonEnvironments:
    """Builds, shares and deletes the releases' Python environments.

    Attributes:
        envs_dir: ``<install_root>/envs``.
        python: the interpreter that creates the envs (``python -m venv``);
            default the agent's own.
        pip_args: extra ``pip install`` arguments, e.g. ``["--no-index",
            "--find-links", "/srv/wheels"]`` for an offline fleet; part of the key.
        runner: runs commands (``subprocess.run``-compatible; injectable).
        timeout_seconds: limit for creating the venv and for ``pip install``, each.
        keepalive: returns a context manager held while a command runs (the
            agent's watchdog keeps pinging systemd meanwhile).
        pip_targets_other_python: use the agent's pip with ``--python``
            (default: when its pip is 22.3 or newer).
    """

    envs_dir: Path
    python: str = field(default_factory=lambda: sys.executable)
    pip_args: Sequence[str] = ()
    runner: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
    timeout_seconds: float = 1800.0
    keepalive: Callable[[], AbstractContextManager[object]] = nullcontext
    pip_targets_other_python: bool | None = None

    def __post_init__(self) -> None:
        self.envs_dir = Path(self.envs_dir).absolute()

    def key(self, requirements: bytes) -> str:
        """The env's name: SHA-256 (hex) of the requirements bytes, interpreter and pip options."""
        digest = hashlib.sha256()
        for part in (
            _KEY_FORMAT,
            os.path.realpath(self.python).encode(),
            *map(str.encode, self.pip_args),
        ):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        digest.update(requirements)
        return digest.hexdigest()

    def env_dir(self, key: str) -> Path:
        """``<envs_dir>/<key>``."""
        return self.envs_dir / key

    def prepare(self, release_dir: Path) -> Path | None:
        """Give ``release_dir`` the env its ``requirements.txt`` asks for (build or reuse).

        Args:
            release_dir: a freshly extracted release (``releases/<version>``).

        Returns:
            The env directory, or ``None`` when the release has no
            ``requirements.txt`` (nothing is created).

        Raises:
            InstallError: the release ships its own ``.venv``, or creating the
                venv or ``pip install`` failed or timed out (the message ends
                with pip's last line); the half-built env is deleted.
        """
        release_dir = Path(release_dir).absolute()
        requirements_path = release_dir / REQUIREMENTS_NAME
        if not requirements_path.is_file():
            return None
        link = release_dir / ENV_LINK_NAME
        if os.path.lexists(link):
            raise InstallError(
                f"release {release_dir.name} ships its own {ENV_LINK_NAME}: the agent builds "
                f"the environment from {REQUIREMENTS_NAME}; leave {ENV_LINK_NAME} out of the package"
            )
        requirements = requirements_path.read_bytes()
        key = self.key(requirements)
        env = self.env_dir(key)
        if (env / COMPLETE_MARKER).is_file():
            logger.info("reusing Python environment %s for %s", key[:12], release_dir.name)
        else:
            self._build(env, requirements_path, requirements)
        os.symlink(os.path.relpath(env, release_dir), link)
        fsync_directory(release_dir)
        return env

    def _build(self, env: Path, requirements_path: Path, requirements: bytes) -> None:
        if os.path.lexists(env):
            logger.info("removing incomplete Python environment %s", env)
            _remove(env)
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        install = has_requirements(requirements)
        use_agent_pip = self.pip_targets_other_python
        if use_agent_pip is None:
            use_agent_pip = _agent_pip_can_target()
        venv_argv = [self.python, "-m", "venv"]
        if not install or use_agent_pip:
            venv_argv.append("--without-pip")
        env_python = env / "bin" / "python"
        pip_argv = (
            [sys.executable, "-m", "pip", "--python", str(env_python)]
            if use_agent_pip
            else [str(env_python), "-m", "pip"]
        )
        pip_argv += [
            "install",
            "--no-input",
            "--disable-pip-version-check",
            *self.pip_args,
            "-r",
            str(requirements_path),
        ]
        logger.info("building Python environment %s for %s", env.name[:12], requirements_path)
        try:
            self._run([*venv_argv, str(env)], "creating the Python environment", env.parent)
            if install:
                self._run(
                    pip_argv,
                    f"installing {REQUIREMENTS_NAME}",
                    requirements_path.parent,
                    {"VIRTUAL_ENV": str(env)},
                )
            body = {
                "requirements_sha256": hashlib.sha256(requirements).hexdigest(),
                "python": self.python,
                "pip_args": list(self.pip_args),
            }
            atomic_write(env / COMPLETE_MARKER, json.dumps(body, sort_keys=True).encode())
        except BaseException:
            _remove(env)
            raise

    def _run(
        self, argv: list[str], what: str, cwd: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
        env.pop("VIRTUAL_ENV", None)
        env.update(extra_env or {})
        kind = "pip" if "pip" in argv else "venv"
        try:
            with self.keepalive():
                result = self.runner(
                    argv,
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    timeout=self.timeout_seconds,
                    check=False,
                )
        except subprocess.TimeoutExpired as expired:
            raise CommandFailedError(
                f"{what} did not finish within {self.timeout_seconds:.0f} s",
                kind=kind,
                output=command_output(expired.stdout, expired.stderr),
            ) from None
        except OSError as error:
            raise InstallError(f"{what} ({argv[0]}) could not run: {error.strerror}") from None
        if result.returncode != 0:
            raise CommandFailedError(
                f"{what} failed with status {result.returncode}: {_tail(result)}",
                kind=kind,
                exit_code=result.returncode,
                output=command_output(result.stdout, result.stderr),
            )

    # -- housekeeping ------------------------------------------------------------------

    def linked_keys(self, releases_dir: Path) -> set[str]:
        """The env keys that some release in ``releases_dir`` links to."""
        keys: set[str] = set()
        if not releases_dir.is_dir():
            return keys
        for release in releases_dir.iterdir():
            link = release / ENV_LINK_NAME
            try:
                target = os.readlink(link)
            except OSError:
                continue
            keys.add(Path(target).name)
        return keys

    def _entries(self) -> Iterator[Path]:
        if self.envs_dir.is_dir():
            yield from self.envs_dir.iterdir()

    def prune(self, releases_dir: Path) -> list[str]:
        """Delete every env no release links to (complete or half-built).

        Call it only while holding the install lock: an env being built for a
        release that is not linked yet would be deleted.

        Returns:
            The names of the deleted envs.
        """
        keep = self.linked_keys(releases_dir)
        removed = []
        for entry in self._entries():
            if entry.name not in keep:
                logger.info("removing unused Python environment %s", entry.name[:12])
                _remove(entry)
                removed.append(entry.name)
        if removed:
            fsync_directory(self.envs_dir)
        return removed


def _tail(result: subprocess.CompletedProcess[bytes]) -> str:
    """The last non-blank line of stderr (where pip puts its error), else of stdout."""
    for stream in (result.stderr, result.stdout):
        text = (stream or b"").decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"


def _remove(path: Path) -> None:
    """Remove an env (any depth, links not followed); what cannot be removed is logged."""
    try:
        remove_tree(path)
    except OSError as error:
        logger.error("cannot remove %s: %s", path, error.strerror or error)
