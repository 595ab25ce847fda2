"""The download rate limit: its written form (register, agent.toml) and the token bucket."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from javia_agent.bandwidth import TokenBucket, parse_rate
from javia_agent.cli import app
from javia_agent.config import load_config
from javia_agent.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512KiB", 512 * 1024),
        ("2MiB", 2 * 1024**2),
        ("100kB", 100_000),
        ("100 KB/s", 100_000),
        ("3MB", 3_000_000),
        ("65536", 65536),
        ("1.5MiB", 1.5 * 1024**2),
        (65536, 65536),
        ("700B", 700),
    ],
)
def test_a_rate_is_read_with_its_unit(text: str | int, expected: float) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text", ["0", "-5", "0KiB", "fast", "12 parsecs", "", "KiB", "1e3", "nan", "99GiB", True]
)
def test_zero_negative_or_nonsense_is_refused_with_the_expected_form(text: object) -> None:
    with pytest.raises(ValueError, match="expected a positive rate in bytes per second"):
        parse_rate(text)  # type: ignore[arg-type]


def test_agent_toml_takes_the_rate_and_refuses_nonsense_naming_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('download_rate_limit = "512KiB"\n')
    assert load_config(config).download_rate_limit_bytes == 512 * 1024
    config.write_text("download_rate_limit = 0\n")
    with pytest.raises(ConfigError, match=r"download_rate_limit: invalid download rate limit"):
        load_config(config)


@pytest.mark.parametrize("value", ["inf", "1e99", "0.001", "0", "-5", "nan"])
def test_the_older_numeric_setting_is_refused_like_the_written_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Infinity once reached the token bucket and crashed the agent mid-download.
    monkeypatch.setenv("JAVIA_AGENT_DOWNLOAD_RATE_LIMIT_BYTES_PER_SECOND", value)
    with pytest.raises(
        ConfigError,
        match=r"download_rate_limit_bytes_per_second: invalid download rate limit .*"
        r"expected a positive rate",
    ):
        load_config(tmp_path / "agent.toml")


def test_the_older_numeric_setting_still_caps_the_download(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("download_rate_limit_bytes_per_second = 65536.0\n")
    assert load_config(config).download_rate_limit_bytes == 65536
    config.write_text("download_rate_limit_bytes_per_second = inf\n")
    with pytest.raises(ConfigError, match="expected a positive rate"):
        load_config(config)


def test_register_with_a_nonsense_rate_is_one_red_line_before_the_server(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "register",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--download-rate-limit",
            "lots",
            "--config",
            str(tmp_path / "a.toml"),
            "--token-file",
            str(tmp_path / "token"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--download-rate-limit" in lines[0] and "512KiB" in lines[0]
    assert not (tmp_path / "a.toml").exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@given(
    rate=st.integers(min_value=1024, max_value=10 * 1024**2),
    chunks=st.lists(st.integers(min_value=1, max_value=256 * 1024), min_size=1, max_size=60),
    pauses=st.lists(st.floats(min_value=0, max_value=2), min_size=60, max_size=60),
)
def test_the_bucket_never_lets_more_than_rate_times_time_plus_the_burst_through(
    rate: int, chunks: list[int], pauses: list[float]
) -> None:
    clock = _Clock()
    bucket = TokenBucket(rate, monotonic=clock.monotonic, sleep=clock.sleep)
    start = clock.now
    received = 0
    for count, pause in zip(chunks, pauses, strict=False):
        clock.now += pause  # the network's own time between chunks
        received += count
        bucket.take(count)
        # After each chunk is accounted for, the average holds (plus one burst).
        assert received <= rate * (clock.now - start) + bucket.capacity + 1e-6 * received


def test_a_steady_stream_is_held_at_the_rate() -> None:
    clock = _Clock()
    bucket = TokenBucket(50_000, monotonic=clock.monotonic, sleep=clock.sleep)
    for _ in range(100):
        bucket.take(10_000)
    assert clock.now - 100.0 == pytest.approx(1_000_000 / 50_000)
