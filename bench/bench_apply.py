"""Apply a 20 MB, 1,000-file package (verify, stage, switch) vs tar -xzf + sha256sum.

Set-up (not timed): an application of 1,000 files, 20 MB in all (random
bytes in 20 directories, plus the example app's ``VERSION`` and ``app.py``),
packaged and signed with ``javia publish --output``.

Timed, into a fresh install root each run:

- javia: :meth:`javia_agent.installer.Installer.install_from_directory`, the
  code path of ``javia agent install`` and of network updates after the
  download: verify the signature, the archive's size and SHA-256, stage
  (extract with every member checked against the manifest, every file's
  hash verified), switch ``current`` atomically, with the state file saved
  and fsynced at each step. The application service is a no-op stand-in
  (start/stop/health are what ``bench_downtime.py`` measures) and the health
  window is 0 s.
- reference: ``tar -xzf`` of the same archive, then ``sha256sum`` of the
  extracted files.

Target (issue 7): ≤ 3 × reference.

Run alone: ``python bench/bench_apply.py [--runs 3]``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BenchResult, Row, summarize
from javia_agent.clock import Clock
from javia_agent.config import AgentPaths
from javia_agent.installer import Installer
from javia_core.keys import load_keyring
from javia_devtools.demo import LocalFleet, example_app_dir

FILES = 1000
TOTAL_BYTES = 20 * 1000 * 1000


class NoService:
    """An application service that is always up: the install path without an app."""

    def stop(self) -> None:
        """Nothing to stop."""

    def start(self) -> None:
        """Nothing to start."""

    def is_active(self) -> bool:
        """Always healthy."""
        return True


def make_app(app_dir: Path) -> None:
    """The example app plus 1,000 files of random bytes, 20 MB in all."""
    shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    present = sum(1 for path in app_dir.rglob("*") if path.is_file())
    count = FILES - present
    size = TOTAL_BYTES // count
    for index in range(count):
        directory = app_dir / "data" / f"part{index % 20:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"file{index:04d}.bin").write_bytes(secrets.token_bytes(size))


def javia_apply(package: Path, keyring_dir: Path, root: Path) -> float:
    """Seconds for the installer to verify, stage and switch ``package`` into ``root``."""
    paths = AgentPaths(
        install_root=root / "opt",
        state_dir=root / "var",
        activity_file=root / "var" / "activity.json",
    )
    paths.install_root.mkdir(parents=True)
    paths.state_dir.mkdir(parents=True)
    installer = Installer(
        paths=paths,
        service=NoService(),
        keyring=lambda: load_keyring(keyring_dir),
        clock=Clock(),
        health_seconds=0.0,
    )
    started = time.perf_counter()
    outcome = installer.install_from_directory(package)
    elapsed = time.perf_counter() - started
    if not (paths.current_link.resolve() / "VERSION").exists():
        raise RuntimeError(f"install did not switch: {outcome}")
    return elapsed


def reference_apply(package: Path, root: Path) -> float:
    """Seconds for ``tar -xzf`` plus ``sha256sum`` of every extracted file."""
    target = root / "tree"
    target.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(package / "payload.tar.gz"), "-C", str(target)], check=True)
    subprocess.run(
        "find . -type f -print0 | xargs -0 sha256sum > /dev/null",
        shell=True,
        check=True,
        cwd=target,
    )
    return time.perf_counter() - started


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    result = BenchResult(
        name="apply",
        title="Apply a 20 MB, 1,000-file package (verify, stage, switch)",
        command="python bench/bench_apply.py",
    )
    javia_seconds: list[float] = []
    reference_seconds: list[float] = []
    with benchlib.scratch_dir("apply") as root:
        builder = LocalFleet(root / "operator")
        builder.generate_key()
        assert builder.public_key_path is not None
        keyring_dir = root / "keys"
        keyring_dir.mkdir()
        shutil.copy2(builder.public_key_path, keyring_dir)
        app_dir = root / "app"
        make_app(app_dir)
        package = builder.build_package(app_dir, "v1.1.0", "scheduled", root / "package")
        javia_apply(package, keyring_dir, root / "warm-up")  # page cache, imports
        for run in range(args.runs):
            reference_seconds.append(reference_apply(package, root / f"reference{run}"))
            javia_seconds.append(javia_apply(package, keyring_dir, root / f"javia{run}"))
            shutil.rmtree(root / f"reference{run}")
            shutil.rmtree(root / f"javia{run}")
        archive_size = (package / "payload.tar.gz").stat().st_size

    measured = summarize(javia_seconds)
    reference = summarize(reference_seconds)
    ratio = measured.median / reference.median
    result.rows.append(
        Row(
            "javia apply (verify, stage, switch)",
            measured.show(2, "s"),
            reference=f"{reference.show(2, 's')} (tar -xzf + sha256sum)",
            ratio=f"{ratio:.2f} ×",
            target="≤ 3 × reference",
            met=ratio <= 3,
            values={
                "javia_seconds": javia_seconds,
                "reference_seconds": reference_seconds,
                "ratio": ratio,
                "archive_bytes": archive_size,
            },
        )
    )
    result.notes.append(
        f"{FILES} files, {TOTAL_BYTES / 1e6:.0f} MB unpacked, archive {archive_size / 1e6:.1f} MB; "
        f"median (min–max) of {args.runs} runs after one warm-up install"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
