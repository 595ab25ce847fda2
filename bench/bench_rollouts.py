"""Rollouts under a bad release: exposure and time to the automatic halt (issue 13).

Runs :func:`javia_devtools.simulate.run_simulation` (a real ``javia server``,
simulated devices over HTTP, as bench_fleet.py) three ways, each publishing
with phases ``1,10,50,100`` and the default halt rule (10 %, shown with 95 %
confidence, of at least 5 finished devices; docs/rollouts.md):

(a) every install fails, soak 1 h (phase 1 cannot open during the run):
    devices exposed (started the update) against the first phase plus the
    installs in flight at the halt, and seconds from the first ``failed``
    report to the rollout read as ``halted`` through the admin API (every 0.5 s);
(b) every install "succeeds" and the application crashes ``--crash-after``
    seconds later, soak 2 min (long enough to see the crash, short enough that
    phase 2 would open if the halt failed): exposure against 2 %, seconds
    from the first heartbeat reporting a crash to ``halted``;
(c) a good release with 0.5 % random failures, ``--good-runs`` runs of
    ``--good-devices`` devices (soak 0, so every phase opens): false halts.
    The rule's false-halt probability per rollout is computed exactly
    (:func:`false_halt_probability`) and the runs check it.

After a halt the fleet keeps heartbeating 1.1 heartbeat intervals + 2 s, so
every device asks once more and any offer after the halt would show.

Run alone: ``python bench/bench_rollouts.py [--devices 10000] [--heartbeat-seconds 30]``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BenchResult, Row
from javia_core.rollouts import RolloutPolicy, Tally, halt_decision
from javia_devtools.simulate import (
    SimulationConfig,
    SimulationError,
    SimulationReport,
    run_simulation,
)

PHASES = "1,10,50,100"
#: The server's default halt rule (docs/rollouts.md, Policy).
HALT_FAILURE_RATE = 10.0
HALT_MIN_DEVICES = 5
GOOD_FAIL_RATE = 0.005


def false_halt_probability(
    fail_rate: float, finishes: int, halt_rate: float, min_devices: int
) -> float:
    """Probability that a release failing each install with ``fail_rate`` is halted.

    The server asks the halt rule (:func:`javia_core.rollouts.halt_decision`:
    at least ``min_devices`` finished and a failure rate of ``halt_rate``
    percent shown with 95 % confidence, or every finished device failed) after
    every finished device; this asks the same function. With independent
    failures the tally after ``k`` finishes is binomial; this walks it finish by
    finish and adds up the probability of first crossing the line, for the
    first ``finishes`` finished devices. Exact up to dropped paths below 1e-15.
    """
    policy = RolloutPolicy(halt_failure_rate=halt_rate, halt_min_devices=min_devices)
    halts: dict[tuple[int, int], bool] = {}

    def halted_at(failures: int, finished: int) -> bool:
        key = (failures, finished)
        if key not in halts:
            tally = Tally(targeted=finished, completed=finished - failures, failed=failures)
            halts[key] = halt_decision(policy, tally) is not None
        return halts[key]

    alive = {0: 1.0}  # failures so far -> probability of not having halted yet
    halted = 0.0
    for finished in range(1, finishes + 1):
        following: dict[int, float] = {}
        for failures, chance in alive.items():
            for extra, step in ((0, 1 - fail_rate), (1, fail_rate)):
                count, reached = failures + extra, chance * step
                if halted_at(count, finished):
                    halted += reached
                elif reached > 1e-15:
                    following[count] = following.get(count, 0.0) + reached
        alive = following
    return halted


def _simulate(config: SimulationConfig, label: str) -> SimulationReport:
    def say(line: str) -> None:
        print(f"  [{label}] {line}", file=sys.stderr, flush=True)

    return run_simulation(config, progress=say)


def _policy(soak_seconds: int) -> dict[str, str]:
    return {
        "phases": PHASES,
        "phase_soak_seconds": str(soak_seconds),
        "halt_failure_rate": f"{HALT_FAILURE_RATE:g}",
        "halt_min_devices": str(HALT_MIN_DEVICES),
    }


def _seconds(value: float | None) -> str:
    return "not halted" if value is None else f"{value:.2f} s"


def _exposure(report: SimulationReport) -> str:
    return (
        f"{report.started:,} of {report.devices:,} ({100 * report.started / report.devices:.2f} %); "
        f"first phase {report.first_phase_devices}, in flight at the halt {report.in_flight_at_halt}, "
        f"started after it {report.started_after_halt}"
    )


def _bad_everywhere(args, result: BenchResult) -> None:  # type: ignore[no-untyped-def]
    report = _simulate(
        SimulationConfig(
            devices=args.devices,
            heartbeat_seconds=args.heartbeat_seconds,
            timeout_seconds=240,
            seed=11,
            fail_all=True,
            rollout=_policy(3600),
        ),
        "a",
    )
    limit = (report.first_phase_devices or 0) + report.in_flight_at_halt
    _halt_rows(
        result,
        report,
        "(a) every install fails",
        "first failure report",
        target="≤ first phase + in flight",
        met=report.started <= limit,
    )


def _crashes_after_install(args, result: BenchResult) -> None:  # type: ignore[no-untyped-def]
    report = _simulate(
        SimulationConfig(
            devices=args.devices,
            heartbeat_seconds=args.heartbeat_seconds,
            timeout_seconds=240,
            seed=12,
            crash_after_seconds=args.crash_after,
            rollout=_policy(120),
        ),
        "b",
    )
    _halt_rows(
        result,
        report,
        f"(b) app crashes {args.crash_after:g} s after a completed install",
        "first crash report",
        target="≤ 2 %",
        met=report.started * 50 <= report.devices,
    )


def _halt_rows(
    result: BenchResult,
    report: SimulationReport,
    label: str,
    first: str,
    *,
    target: str,
    met: bool,
) -> None:
    """The exposure row (met only if the rollout halted) and the time-to-halt row."""
    result.rows.append(
        Row(
            f"{label}: devices exposed",
            _exposure(report),
            target=target,
            met=report.rollout_state == "halted" and met,
            values=report.to_dict(),
        )
    )
    result.rows.append(
        Row(
            f"{label.split(' ', 1)[0]} {first} → halted (the report that crossed the line → halted)",
            f"{_seconds(report.seconds_first_failure_to_halt)} "
            f"({_seconds(report.seconds_last_failure_to_halt)})",
        )
    )
    result.notes.append(
        f"{label.split(' ', 1)[0]} halt reason: {report.halt_reason}; errors: {report.error_count}"
    )


def _good_release(args, result: BenchResult) -> None:  # type: ignore[no-untyped-def]
    def one(run: int) -> SimulationReport:
        return _simulate(
            SimulationConfig(
                devices=args.good_devices,
                heartbeat_seconds=2.0,
                connections=8,
                timeout_seconds=90,
                seed=100 + run,
                fail_rate=GOOD_FAIL_RATE,
                rollout=_policy(0),
            ),
            f"c{run + 1}",
        )

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        reports = list(pool.map(one, range(args.good_runs)))
    halts = sum(report.rollout_state == "halted" for report in reports)
    unfinished = sum(report.rollout_state not in ("halted", "completed") for report in reports)
    failures = sum(report.failed for report in reports)
    installs = sum(report.completed + report.failed for report in reports)
    chance = false_halt_probability(
        GOOD_FAIL_RATE, args.good_devices, HALT_FAILURE_RATE, HALT_MIN_DEVICES
    )
    whole_fleet = false_halt_probability(GOOD_FAIL_RATE, 1000, HALT_FAILURE_RATE, HALT_MIN_DEVICES)
    result.rows.append(
        Row(
            f"(c) good release, 0.5 % failures: false halts in {args.good_runs} runs "
            f"of {args.good_devices} devices",
            f"{halts} (runs not finished: {unfinished}; {failures} failures in {installs:,} installs)",
            target=f"0 in {args.good_runs}",
            met=halts == 0 and unfinished == 0,
            values={"runs": [report.to_dict() for report in reports]},
        )
    )
    none_in_runs = (1 - chance) ** args.good_runs
    result.rows.append(
        Row(
            "(c) the rule's false-halt probability per rollout (exact, binomial)",
            f"{100 * chance:.2f} % over the first {args.good_devices} finishes, "
            f"{100 * whole_fleet:.2f} % over 1,000; expected {args.good_runs * chance:.2f} "
            f"in {args.good_runs} runs, P(none) {100 * none_in_runs:.0f} %",
        )
    )
    for min_devices in (20, 30, 50):
        other = false_halt_probability(GOOD_FAIL_RATE, 1000, HALT_FAILURE_RATE, min_devices)
        result.rows.append(
            Row(
                f"(c) the same with --halt-min-devices {min_devices} (exact)",
                f"{100 * other:.2g} % per rollout",
            )
        )
    result.notes.append(
        f"(c) {args.good_runs} runs of {args.good_devices} devices, {args.parallel} at a time, "
        "heartbeat 2 s, soak 0 (every phase opens once its first install completed); "
        "each run its own server"
    )


def main() -> None:
    """Run (a), (b) and (c), print the table, write JSON if asked."""

    def extra(parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--devices", type=int, default=10_000)
        parser.add_argument("--heartbeat-seconds", type=float, default=30.0)
        parser.add_argument("--crash-after", type=float, default=20.0)
        parser.add_argument("--good-runs", type=int, default=20)
        parser.add_argument("--good-devices", type=int, default=100)
        parser.add_argument("--parallel", type=int, default=4)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="rollouts",
        title=f"Rollouts: a bad release among {args.devices:,} simulated devices",
        command=(
            f"python bench/bench_rollouts.py --devices {args.devices} "
            f"--heartbeat-seconds {args.heartbeat_seconds:g}"
        ),
    )
    try:
        _bad_everywhere(args, result)
        _crashes_after_install(args, result)
        _good_release(args, result)
    except SimulationError as error:
        sys.exit(f"error: {error}")
    result.notes.append(
        f"phases {PHASES}, halt at {HALT_FAILURE_RATE:g} % (95 % confidence) of at least "
        f"{HALT_MIN_DEVICES} finished devices (the defaults); heartbeat {args.heartbeat_seconds:g} s for (a) and "
        "(b); the rollout's state read through the admin API every 0.5 s; simulator and "
        "servers share the machine's cores"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
