"""Server settings: environment over the TOML file, defaults, the API key requirement."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from javia_updates.settings import ServerSettings, SettingsError


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = ServerSettings()
    assert settings.api_key is None and settings.backend == "local"
    assert settings.data_dir == Path("javia-data")
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path / 'javia-data' / 'javia.db'}"
    assert (
        settings.heartbeat_interval_seconds,
        settings.window_start,
        settings.window_seconds,
    ) == (300, time(2), 10800)
    assert (settings.urgent_idle_seconds, settings.instant_online_seconds) == (3600, 300)
    assert settings.max_upload_bytes == 2 * 1024**3
    assert settings.trusted_keys_dir is None


def test_toml_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    config = tmp_path / "server.toml"
    config.write_text(
        'api_key = "from-file-admin-key-0123456789"\ndata_dir = "/srv/javia"\nwindow_start = "03:30:00"\nheartbeat_interval_seconds = 60\n'
    )
    monkeypatch.setenv("JAVIA_CONFIG", str(config))
    monkeypatch.setenv("JAVIA_HEARTBEAT_INTERVAL_SECONDS", "120")

    settings = ServerSettings()

    assert settings.require_api_key() == "from-file-admin-key-0123456789"
    assert settings.data_dir == Path("/srv/javia") and settings.window_start == time(3, 30)
    assert settings.heartbeat_interval_seconds == 120  # environment over file
    assert (
        ServerSettings(heartbeat_interval_seconds=30).heartbeat_interval_seconds == 30
    )  # arguments over both


def test_database_url_overrides_the_sqlite_default(monkeypatch):
    monkeypatch.setenv("JAVIA_DATABASE_URL", "postgresql://javia@db/fleet")
    assert ServerSettings().resolved_database_url() == "postgresql://javia@db/fleet"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_missing_api_key_is_refused_with_how_to_set_it(key):
    with pytest.raises(SettingsError, match="JAVIA_API_KEY"):
        ServerSettings(api_key=key).require_api_key()


def test_api_key_is_not_shown_in_the_settings_repr():
    assert "s3cret-value" not in repr(ServerSettings(api_key="s3cret-value"))


@pytest.mark.parametrize(
    "field", [{"window_seconds": 0}, {"heartbeat_interval_seconds": 0}, {"window_start": "25:00"}]
)
def test_out_of_range_values_are_refused(field):
    with pytest.raises(ValidationError):
        ServerSettings(**field)
