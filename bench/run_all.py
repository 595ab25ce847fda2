"""Run every benchmark and rewrite the results section of ``docs/benchmarks.md``.

``make bench`` runs this. Each benchmark runs as its own process (as a user
would run it alone) with ``--json``; their tables are gathered under the
machine description and the command, between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` of
``docs/benchmarks.md``. The rest of that file (analysis, profiles, scaling)
is written by people and kept as it is.

Installs nothing: wrk and nginx come from Debian (``apt-get install wrk
nginx-light``); without wrk the httpx load generator is used, without nginx
the download reference is reported as unavailable.

Options: ``--only heartbeat,publish`` runs a subset; ``--no-write`` only prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

BENCH = Path(__file__).resolve().parent
DOC = BENCH.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

#: (name, script, extra arguments, time limit in seconds), in running order.
BENCHMARKS = [
    ("heartbeat", "bench_heartbeat.py", [], 360),
    ("publish", "bench_publish.py", [], 240),
    ("download", "bench_download.py", [], 240),
    ("agent", "bench_agent.py", [], 120),
    ("apply", "bench_apply.py", [], 120),
    ("routes", "bench_device_routes.py", ["--runs", "1", "--seconds", "5"], 120),
    # 10,000 devices, one server process, workers, workers without install
    # admission: about 6 min each here.
    ("fleet", "bench_fleet.py", ["--devices", "10000", "--heartbeat-seconds", "30"], 2400),
    ("downtime", "bench_downtime.py", [], 180),
    # Issue 15: the dashboard's polled pages over 2,000 devices (about 1 min).
    ("dashboard", "bench_dashboard.py", ["--devices", "2000"], 240),
    # Issue 14: bytes for a change (50 MiB, 500 files) and the bandwidth cap; about 5 min here.
    ("deltas", "bench_deltas.py", ["--files", "500", "--mib", "50"], 900),
    # Issue 13: a bad release among 10,000 devices halts; a good one does not.
    # About 6 min here: two 10,000-device runs and 20 runs of 100 devices.
    ("rollouts", "bench_rollouts.py", ["--devices", "10000", "--heartbeat-seconds", "30"], 720),
    # Issue 14: 10,000 devices holding the wake-up channel, one instant publish.
    ("wakeup", "bench_wakeup.py", ["--devices", "9900"], 900),
    # Issue 12: heartbeats and the idle agent beside the previous main (a git worktree).
    # About 3 min on a quiet machine, 9 min when the machine is shared.
    ("baseline", "bench_baseline.py", [], 900),
    # Issue 15: one /metrics scrape at 100,000 devices (building the database takes longest).
    ("metrics", "bench_metrics.py", ["--devices", "100000", "--runs", "5"], 600),
]

SUMMARY_HEADER = (
    "| benchmark | measured | reference | ratio | target | met |\n|---|---|---|---|---|---|"
)


def _run(
    script: Path, arguments: list[str] | None, limit: float, json_path: Path
) -> tuple[dict | None, str, float]:
    argv = [sys.executable, str(script)]
    if arguments is not None:
        argv += [*arguments, "--json", str(json_path)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=limit,
            cwd=BENCH.parent,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        output = (
            (error.stdout or b"").decode()
            if isinstance(error.stdout, bytes)
            else (error.stdout or "")
        )
        return (
            None,
            f"**timed out after {limit:.0f} s**\n\n{output[-3000:]}",
            time.perf_counter() - started,
        )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout)[-3000:]
        return None, f"**failed (exit {completed.returncode})**\n\n```\n{tail}\n```\n", elapsed
    if arguments is None:
        return None, completed.stdout, elapsed
    return json.loads(json_path.read_text(encoding="utf-8")), completed.stdout, elapsed


def _machine_table(machine: dict[str, str]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    return "\n".join(lines)


def _summary_rows(results: list[dict]) -> list[str]:
    rows = []
    for result in results:
        for row in result["rows"]:
            if not row["target"]:
                continue
            met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
            rows.append(
                f"| {result['title']}: {row['benchmark']} | {row['measured']} | {row['reference'] or '—'} | "
                f"{row['ratio'] or '—'} | {row['target']} | {met} |"
            )
    return rows


def render(
    machine: dict[str, str],
    results: list[dict],
    raw_sections: list[tuple[str, str]],
    total: float,
    command: str,
) -> str:
    """The generated results section (between the markers)."""
    parts = [
        BEGIN,
        "",
        (
            f"Generated by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
            f"{total / 60:.1f} min. Measured: median, with (min–max) over the runs."
        ),
        "",
        "#### Machine",
        "",
        _machine_table(machine),
        "",
        "#### Summary against the targets of issue 7",
        "",
        SUMMARY_HEADER,
        *_summary_rows(results),
        "",
        "#### Each benchmark",
        "",
    ]
    for result in results:
        parts.append(_markdown(result))
    for title, text in raw_sections:
        parts += [f"### {title}", "", text.strip(), ""]
    parts.append(END)
    return "\n".join(parts) + "\n"


def _markdown(result: dict) -> str:
    rebuilt = benchlib.BenchResult(
        name=result["name"],
        title=result["title"],
        command=result["command"],
        rows=[benchlib.Row(**row) for row in result["rows"]],
        notes=result["notes"],
        seconds=result["seconds"],
    )
    return rebuilt.markdown()


def write_doc(section: str) -> None:
    """Replace the results section of docs/benchmarks.md (or start the file)."""
    if DOC.exists():
        text = DOC.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            DOC.write_text(head + section.rstrip("\n") + tail, encoding="utf-8")
            return
        DOC.write_text(text.rstrip("\n") + "\n\n## Results\n\n" + section, encoding="utf-8")
        return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("# Benchmarks\n\n## Results\n\n" + section, encoding="utf-8")


def main() -> None:
    """Run the benchmarks in order, print each table, rewrite the document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help="comma-separated benchmark names: " + ", ".join(b[0] for b in BENCHMARKS)
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    machine = benchlib.machine_description()
    print(
        "javia benchmarks on "
        + ", ".join(f"{k}: {v}" for k, v in machine.items() if k != "packages"),
        flush=True,
    )
    if machine["wrk"] == "not installed":
        print(
            "wrk is not installed (apt-get install wrk): using the slower httpx load generator",
            flush=True,
        )
    if machine["nginx"] == "not installed":
        print(
            "nginx is not installed (apt-get install nginx-light): no download reference",
            flush=True,
        )
    results: list[dict] = []
    raw: list[tuple[str, str]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="javia-bench-") as scratch:
        for name, script_name, arguments, limit in BENCHMARKS:
            if chosen is not None and name not in chosen:
                continue
            script = BENCH / script_name
            if not script.exists():
                print(f"-- {name}: {script_name} not present, skipped", flush=True)
                continue
            print(f"-- {name}: running {script_name} (limit {limit} s)", flush=True)
            result, output, elapsed = _run(script, arguments, limit, Path(scratch) / f"{name}.json")
            if result is not None:
                results.append(result)
                print(_markdown(result), flush=True)
            else:
                raw.append((f"{name} ({script_name}, {elapsed:.0f} s)", output))
                print(output, flush=True)
                failed = failed or output.startswith("**")
    total = time.perf_counter() - started
    command = "make bench" if not args.only else f"python bench/run_all.py --only {args.only}"
    section = render(machine, results, raw, total, command)
    if not args.no_write:
        write_doc(section)
        print(f"wrote {DOC} ({total / 60:.1f} min)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
