"""Side by side with the previous main: heartbeats and the agent's idle cost, current vs a baseline.

Issue 12 (the restructuring) is done only if the heartbeat and agent
benchmarks do not regress against the code before it. This benchmark checks
the baseline commit (:data:`BASELINE`, the previous main; ``--baseline REV``
for another) out into a temporary detached ``git worktree`` (removed
afterwards) and runs, in the same run and on the same interpreter:

- heartbeats, as ``bench_heartbeat.py`` does (200 devices, 200 connections,
  no pending update, warm caches): the current server and the baseline's
  server run side by side, and their saturated runs alternate (current first,
  then baseline first, ...) so both see the same load from the machine's other
  users; then p99 at one paced rate for both (half the slower one's saturated
  throughput). The server's CPU per heartbeat during the saturated runs is
  reported too: unlike the rate, it does not depend on the load generator.
- the agent, as ``bench_agent.py`` does: one current and one baseline
  ``javia agent run`` (each with its own server, device and application) run
  at the same time and are measured over the same windows.

The baseline's processes run entirely from its own sources
(``PYTHONPATH=<worktree>/src``, ``python -m javia_updates.server`` and
``python -m javia_updates.cli.main``, its entry points); before measuring,
a child with that environment reports where its modules come from, and the
benchmark stops if any is not under the worktree.

Targets: heartbeats/s ≥ 0.95 × previous (0.05 is the noise allowance of a
shared machine, not a budget); agent idle RSS ≤ previous + 1 MiB; agent CPU
per heartbeat ≤ previous + 1 ms (/proc counts 10 ms ticks, about 10
heartbeats per window).

Without git, or without the commit (a shallow clone), the rows say "not
measured" and why.

Run alone: ``python bench/bench_baseline.py [--runs 3] [--seconds 10] [--baseline REV]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_agent
import bench_heartbeat
import benchlib
from benchlib import BenchResult, Row, Summary, summarize
from javia_devtools.server_process import SERVER_MODULE_COMMAND, ServerProcess

#: The previous main: the last commit before the restructuring of issue 12.
BASELINE = "b443a35"

#: Modules the baseline's processes import; each must come from its worktree.
BASELINE_MODULES = ("javia_updates.server", "javia_updates.cli.main", "javia_agent.cli")


class BaselineUnavailable(Exception):
    """The baseline cannot be checked out (no git, unknown commit, shallow clone)."""


@dataclass(frozen=True)
class Checkout:
    """One side of the comparison: how its server, CLI and agent are started.

    Attributes:
        label: ``current`` or ``previous main (REV)``.
        env: environment added to each of its processes (``PYTHONPATH``).
        server_command: argv that starts its server, before ``--host`` etc.
        javia_command: argv prefix of its ``javia`` CLI (``None``: this installation's).
    """

    label: str
    env: dict[str, str]
    server_command: tuple[str, ...]
    javia_command: tuple[str, ...] | None = None

    def fleet_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`LocalFleet` that start this side's processes."""
        options: dict[str, Any] = {"env": self.env, "server_command": self.server_command}
        if self.javia_command is not None:
            options["command"] = self.javia_command
        return options


def current_checkout() -> Checkout:
    """The code this script runs with (its ``python -m javia_updates.server`` and ``javia``)."""
    return Checkout("current", {}, tuple(SERVER_MODULE_COMMAND))


def _git(*args: str) -> str:
    try:
        completed = subprocess.run(
            ["git", "-C", str(benchlib.REPO), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise BaselineUnavailable("git is not installed") from None
    if completed.returncode != 0:
        detail = completed.stderr.strip()[-500:] or f"exit {completed.returncode}"
        raise BaselineUnavailable(f"git {' '.join(args)}: {detail}")
    return completed.stdout.strip()


@contextmanager
def baseline_worktree(revision: str, parent: Path) -> Iterator[tuple[Path, str]]:
    """``revision`` checked out, detached, in a new worktree under ``parent``; removed afterwards.

    Yields:
        The worktree's path and the commit's short hash.

    Raises:
        BaselineUnavailable: no git, not a repository, or the commit is not
            there (a shallow clone: ``git fetch --unshallow``).
    """
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except BaselineUnavailable as error:
        raise BaselineUnavailable(
            f"no commit {revision} in {benchlib.REPO} (a shallow clone? git fetch --unshallow): "
            f"{error}"
        ) from None
    short = _git("rev-parse", "--short", commit)
    path = parent / f"baseline-{short}"
    _git("worktree", "add", "--detach", str(path), commit)
    try:
        yield path, short
    finally:
        subprocess.run(
            ["git", "-C", str(benchlib.REPO), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(
            ["git", "-C", str(benchlib.REPO), "worktree", "prune"],
            check=False,
            capture_output=True,
        )


def baseline_checkout(worktree: Path, short: str) -> Checkout:
    """The baseline's processes: its sources first on the path, its own entry points.

    Raises:
        RuntimeError: a child with that environment imports one of
            :data:`BASELINE_MODULES` from outside ``worktree`` (the comparison
            would mix current code into the baseline).
    """
    sources = worktree / "src"
    checkout = Checkout(
        f"previous main ({short})",
        {"PYTHONPATH": str(sources)},
        (sys.executable, "-m", "javia_updates.server"),
        (sys.executable, "-m", "javia_updates.cli.main"),
    )
    # Every javia module the entry points load, with the file it came from.
    probe = (
        "import importlib, json, sys; [importlib.import_module(name) for name in sys.argv[1:]]; "
        "print(json.dumps({name: getattr(module, '__file__', None) or '' "
        "for name, module in sys.modules.items() if name.startswith('javia')}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe, *BASELINE_MODULES],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=worktree,
        env={**os.environ, **checkout.env},
    )
    files = json.loads(completed.stdout)
    outside = {
        name: file or "(no file)"
        for name, file in files.items()
        if not Path(file).resolve().is_relative_to(sources)
    }
    if outside:
        raise RuntimeError(f"baseline modules imported from outside {sources}: {outside}")
    return checkout


# --------------------------------------------------------------------------- heartbeats


@dataclass
class HeartbeatSide:
    """One side's server under heartbeat load and what was measured on it."""

    server: ServerProcess
    requests: list[tuple[str, str, dict[str, str], str]]
    saturated: list[benchlib.LoadResult]
    paced: list[benchlib.LoadResult]
    cpu_ms_per_heartbeat: list[float]


def _alternating(runs: int, sides: list[str]) -> Iterator[str]:
    """``sides`` in turn, ``runs`` times, starting with the next side each time."""
    for run in range(runs):
        yield from sides[run % len(sides) :] + sides[: run % len(sides)]


def measure_heartbeats(
    root: Path, checkouts: dict[str, Checkout], runs: int, seconds: float
) -> tuple[dict[str, HeartbeatSide], float]:
    """Saturated and paced heartbeat runs on each side, alternating; the paced rate (per second)."""
    sides: dict[str, HeartbeatSide] = {}
    with ExitStack() as stack:
        for key, checkout in checkouts.items():
            server = ServerProcess(
                root / key / "data",
                secrets.token_urlsafe(32),
                env={**checkout.env, **bench_heartbeat.SERVER_ENV},
                command=checkout.server_command,
            )
            server.start(timeout=60)
            stack.callback(server.stop)
            sides[key] = HeartbeatSide(
                server,
                bench_heartbeat.registered_and_warm(server.url, server.api_key),
                [],
                [],
                [],
            )
        for key in _alternating(runs, list(sides)):
            side = sides[key]
            assert side.server.process is not None
            pid = side.server.process.pid
            cpu_before = benchlib.process_cpu_seconds(pid) or 0.0
            run = bench_heartbeat.load(side.server.url, side.requests, seconds)
            cpu_after = benchlib.process_cpu_seconds(pid) or 0.0
            side.saturated.append(run)
            side.cpu_ms_per_heartbeat.append(
                1000 * (cpu_after - cpu_before) / max(1.0, run.requests_per_second * seconds)
            )
            print(
                f"  {checkouts[key].label}: {run.requests_per_second:,.0f} heartbeats/s "
                f"saturated, {run.errors} errors",
                flush=True,
            )
        rate = 0.5 * min(
            summarize([run.requests_per_second for run in side.saturated]).median
            for side in sides.values()
        )
        think_ms = 1000.0 * bench_heartbeat.CONNECTIONS / rate
        for key in _alternating(runs, list(sides)):
            side = sides[key]
            side.paced.append(
                bench_heartbeat.load(
                    side.server.url, side.requests, bench_heartbeat.LATENCY_SECONDS, think_ms
                )
            )
            print(
                f"  {checkouts[key].label}: p99 {side.paced[-1].latency_ms.get('p99', 0):.1f} ms "
                f"at {side.paced[-1].requests_per_second:,.0f}/s paced",
                flush=True,
            )
    return sides, rate


# --------------------------------------------------------------------------- agent


def measure_agents(
    root: Path, checkouts: dict[str, Checkout], runs: int, seconds: float
) -> dict[str, list[bench_agent.AgentWindow]]:
    """Both sides' idle agents at the same time, measured over the same windows."""
    windows: dict[str, list[bench_agent.AgentWindow]] = {key: [] for key in checkouts}
    with ExitStack() as stack:
        agents = {
            key: stack.enter_context(
                bench_agent.idle_agent(root / f"agent-{key}", **checkout.fleet_options())
            )
            for key, checkout in checkouts.items()
        }
        time.sleep(bench_agent.WARM_UP_SECONDS)
        for _ in range(runs):
            starts = {key: agent.window_start() for key, agent in agents.items()}
            time.sleep(seconds)
            for key, agent in agents.items():
                windows[key].append(agent.window_end(starts[key]))
    return windows


# --------------------------------------------------------------------------- rows


def _compare(
    name: str,
    summaries: dict[str, Summary],
    digits: int,
    unit: str,
    target: str = "",
    met: bool | None = None,
    values: dict[str, Any] | None = None,
) -> Row:
    """A row with the current side measured and the baseline as the reference."""
    current, previous = summaries["current"], summaries["baseline"]
    return Row(
        name,
        current.show(digits, unit),
        reference=previous.show(digits, unit),
        ratio=benchlib.ratio_text(current.median, previous.median),
        target=target,
        met=met,
        values=values or {},
    )


def heartbeat_rows(sides: dict[str, HeartbeatSide], rate: float, label: str) -> list[Row]:
    """Rows comparing the current server's heartbeats with the baseline's."""
    rps = {
        key: summarize([run.requests_per_second for run in side.saturated])
        for key, side in sides.items()
    }
    p99 = {
        key: summarize([run.latency_ms.get("p99", 0.0) for run in side.paced])
        for key, side in sides.items()
    }
    cpu = {key: summarize(side.cpu_ms_per_heartbeat) for key, side in sides.items()}
    errors = sum(run.errors for side in sides.values() for run in side.saturated + side.paced)
    values = {
        key: {
            "saturated": bench_heartbeat._values(side.saturated),
            "paced": bench_heartbeat._values(side.paced),
            "server_cpu_ms_per_heartbeat": side.cpu_ms_per_heartbeat,
        }
        for key, side in sides.items()
    }
    ratio = rps["current"].median / rps["baseline"].median
    return [
        _compare(
            f"heartbeats/s warm, no pending update: current vs {label}"
            + (f" ({errors} errors)" if errors else ""),
            rps,
            0,
            "/s",
            target="≥ 0.95 × previous (noise allowance)",
            met=ratio >= 0.95 and errors == 0,
            values={**values, "ratio": ratio},
        ),
        _compare(
            f"heartbeat p99 at {rate:,.0f}/s (paced): current vs {label}",
            p99,
            1,
            "ms",
            values={"rate": rate},
        ),
        _compare(
            f"server CPU per heartbeat (saturated): current vs {label}",
            cpu,
            2,
            "ms",
        ),
    ]


def agent_rows(windows: dict[str, list[bench_agent.AgentWindow]], label: str) -> list[Row]:
    """Rows comparing the current agent's idle memory and heartbeat CPU with the baseline's."""
    rss = {key: summarize([w.rss_mib for w in side]) for key, side in windows.items()}
    private = {key: summarize([w.private_mib for w in side]) for key, side in windows.items()}
    cpu = {key: summarize([w.cpu_ms_per_heartbeat for w in side]) for key, side in windows.items()}
    values = {
        key: {
            "rss_mib": [w.rss_mib for w in side],
            "private_mib": [w.private_mib for w in side],
            "cpu_ms_per_heartbeat": [w.cpu_ms_per_heartbeat for w in side],
            "heartbeats_per_window": [w.heartbeats for w in side],
        }
        for key, side in windows.items()
    }
    #: (what, summaries, digits, unit, allowance over the previous median or None)
    specs = (
        ("agent idle RSS", rss, 1, "MiB", 1.0),
        ("agent idle private memory (RssAnon)", private, 1, "MiB", None),
        ("agent CPU per heartbeat", cpu, 2, "ms", 1.0),
    )
    return [
        _compare(
            f"{name}: current vs {label}",
            summaries,
            digits,
            unit,
            target="" if allowance is None else f"≤ previous + {allowance:g} {unit}",
            met=None
            if allowance is None
            else summaries["current"].median <= summaries["baseline"].median + allowance,
            values=values,
        )
        for name, summaries, digits, unit, allowance in specs
    ]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        metavar="REV",
        help=f"the commit to compare with (default {BASELINE}, the previous main)",
    )


def main() -> None:
    """Check out the baseline, measure both sides, print the table, write JSON if asked."""
    args = benchlib.main_arguments(__doc__.splitlines()[0], _arguments)
    started = time.perf_counter()
    result = BenchResult(
        name="baseline",
        title=f"Side by side with the previous main ({args.baseline})",
        command="python bench/bench_baseline.py",
    )
    with benchlib.scratch_dir("baseline") as root:
        try:
            with baseline_worktree(args.baseline, root) as (worktree, short):
                label = f"previous main ({short})"
                checkouts = {
                    "current": current_checkout(),
                    "baseline": baseline_checkout(worktree, short),
                }
                print(f"baseline {short} checked out in {worktree}", flush=True)
                sides, rate = measure_heartbeats(root, checkouts, args.runs, args.seconds)
                result.rows += heartbeat_rows(sides, rate, label)
                windows = measure_agents(root, checkouts, args.runs, args.seconds)
                result.rows += agent_rows(windows, label)
        except BaselineUnavailable as error:
            print(f"baseline {args.baseline} not available: {error}", flush=True)
            for name, target in (
                ("heartbeats/s warm", "≥ 0.95 × previous (noise allowance)"),
                ("agent idle RSS", "≤ previous + 1 MiB"),
                ("agent CPU per heartbeat", "≤ previous + 1 ms"),
            ):
                result.rows.append(
                    Row(
                        f"{name}: current vs previous main ({args.baseline})",
                        "not measured",
                        target=target,
                    )
                )
            result.notes.append(f"baseline {args.baseline} not available: {error}")
            benchlib.finish(result, args, started)
            return
    generator = sides["current"].saturated[0].generator
    result.notes.append(
        f"heartbeats: {bench_heartbeat.DEVICES} devices, {bench_heartbeat.CONNECTIONS} "
        f"connections, load generator {generator}; both servers run side by side and their "
        f"{args.seconds:g} s saturated runs alternate (current first, then the previous main "
        f"first, ...), {args.runs} each after a warm-up; p99 at the same paced rate for both, "
        f"half the slower side's saturated throughput ({bench_heartbeat.LATENCY_SECONDS:g} s runs); "
        "server CPU per heartbeat = the server process's CPU time in a saturated run / the "
        "heartbeats answered in it"
        + (
            ""
            if generator == "wrk"
            else " — wrk is not installed: the httpx generator may be slower than both "
            "servers, so the rate ratio understates a difference; the CPU per heartbeat does not"
        )
    )
    result.notes.append(
        f"agent: both agents (1 s heartbeat, each with its own server and application) run at "
        f"the same time and are measured over the same {args.runs} windows of {args.seconds:g} s "
        f"after a {bench_agent.WARM_UP_SECONDS:g} s warm-up, as in bench_agent.py"
    )
    result.notes.append(
        f"the previous main runs from a detached git worktree of {args.baseline} with "
        "PYTHONPATH=<worktree>/src and its own entry points (python -m javia_updates.server, "
        "python -m javia_updates.cli.main), checked to import only from there; the machine is "
        "shared, so the spreads (min–max) are part of the result: ≥ 0.95 × allows for noise"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
