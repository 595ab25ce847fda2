"""How the operator CLI prints failures: bounded tails, counts, plurals (in-process)."""

from __future__ import annotations

import io

from rich.console import Console

from javia_core.failures import FailureClass, FailureDetails
from javia_core.models import UpdateStatus
from javia_updates.cli.failures import example_title, failure_view, tail_excerpt
from javia_updates.cli.updates import STATUS_ORDER


def rendered(failure: FailureDetails) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(failure_view("why dev1 failed", failure))
    return out.getvalue().splitlines()


def failure_with(tail: str) -> FailureDetails:
    return FailureDetails(
        failure_class=FailureClass.CRASH_AFTER_START,
        step="health_check",
        reason="stopped",
        output_tail=tail,
    )


def test_a_huge_output_tail_prints_a_screenful_and_says_how_to_see_the_rest() -> None:
    long_lines = "\n".join(f"line {index} " + "x" * 140 for index in range(458))
    lines = rendered(failure_with(long_lines[-65_000:]))
    assert len(lines) < 50
    assert "line 457 " in "".join(lines)
    assert any("more lines: --json for all" in line for line in lines)
    one_line = rendered(failure_with("y" * 65_000 + "END"))
    assert len(one_line) < 50 and "".join(one_line[:-1]).endswith("END")
    assert "a line was cut: --json for all" in one_line[-1]


def test_a_short_tail_is_printed_whole_without_a_note() -> None:
    kept, hidden, cut = tail_excerpt("starting\n\nRuntimeError: no microphone")
    assert (kept, hidden, cut) == (["starting", "RuntimeError: no microphone"], 0, False)
    assert not any("--json" in line for line in rendered(failure_with("a\nb")))


def test_tail_excerpts_stay_within_their_bounds() -> None:
    text = "\n".join(str(index) * 300 for index in range(1, 10))
    kept, hidden, cut = tail_excerpt(text, lines=5, chars=1000)
    assert sum(len(line) for line in kept) <= 1000 + 1 and cut
    assert kept[-1] == "9" * 300 and hidden == 9 - len(kept)


def test_each_status_is_counted_once() -> None:
    assert len(STATUS_ORDER) == len(set(STATUS_ORDER))
    assert set(STATUS_ORDER) == {status.value for status in UpdateStatus}


def test_example_titles_are_plural_only_for_several_devices() -> None:
    assert example_title("dev2", 1) == "example: dev2 (1 device)"
    assert example_title("dev2", 3) == "example: dev2 (3 devices)"
