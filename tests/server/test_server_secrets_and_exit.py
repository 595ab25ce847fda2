"""The server's secrets are refused at start when no request could match them,
and its metrics directory is gone after every normal exit (docs/metrics.md)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from javia_devtools.server_process import ServerProcess
from javia_updates.settings import ServerSettings, SettingsError

GOOD = "adminkey-abcdefgh-123"
UNMATCHABLE = {
    "trailing-space": "metricstoken-abcdefgh-123 ",
    "leading-tab": "\tmetricstoken-abcdefgh-123",
    "crlf": "metricstoken-abcdefgh\r\nX-Evil: 1",
    "nul": "metricstoken-abcdefgh\x00123",
    "inner-space": "metricstoken abcdefgh-123",
    "cyrillic": "ключ-abcdefgh-ключ-ключ",
}


@pytest.mark.parametrize("value", UNMATCHABLE.values(), ids=UNMATCHABLE.keys())
@pytest.mark.parametrize("setting", ["api_key", "metrics_token", "dashboard_secret"])
def test_a_secret_no_request_could_match_is_refused_by_name(setting: str, value: str) -> None:
    settings = ServerSettings(**{"api_key": GOOD, setting: value})
    with pytest.raises(SettingsError) as refused:
        settings.require_api_key()
    message = str(refused.value)
    assert f"JAVIA_{setting.upper()}" in message
    assert "must not begin or end with whitespace or hold control characters" in message
    assert "abcdefgh" not in message


def test_printable_ascii_secrets_are_kept() -> None:
    settings = ServerSettings(api_key=GOOD, metrics_token="m" * 16, dashboard_secret="!~" * 8)
    assert settings.require_api_key() == GOOD


def _metrics_directories(root: Path) -> list[Path]:
    return sorted(root.glob("javia-metrics-*"))


@pytest.mark.parametrize(
    ("workers", "stop"),
    [("1", signal.SIGTERM), ("1", signal.SIGINT)],
    ids=["sigterm", "sigint"],
)
def test_the_metrics_directory_is_removed_when_the_server_is_stopped(
    tmp_path: Path, workers: str, stop: signal.Signals
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = ServerProcess(
        tmp_path / "data", api_key=GOOD, env={"TMPDIR": str(temporary), "JAVIA_WORKERS": workers}
    )
    with server:
        assert len(_metrics_directories(temporary)) == 1
        assert server.process is not None
        server.process.send_signal(stop)
        server.process.wait(timeout=20)
    assert _metrics_directories(temporary) == []
    assert "Traceback" not in server.log.read_text()
