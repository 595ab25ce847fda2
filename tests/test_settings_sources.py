"""Settings sources: keyword arguments over the environment over a TOML file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from javia_core.settings_sources import EnvOverTomlSettings


class ExampleSettings(EnvOverTomlSettings):
    model_config = SettingsConfigDict(env_prefix="JAVIA_EXAMPLE_", extra="ignore")

    colour: str = "default"
    size: int = 1

    @classmethod
    def toml_config_path(cls) -> Path | None:
        value = os.environ.get("JAVIA_EXAMPLE_FILE")
        return Path(value) if value else None


@pytest.fixture
def settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "example.toml"
    path.write_text('colour = "from-file"\nsize = 3\n')
    monkeypatch.setenv("JAVIA_EXAMPLE_FILE", str(path))
    return path


def test_the_file_is_read_when_nothing_else_sets_a_value(settings_file: Path) -> None:
    assert (ExampleSettings().colour, ExampleSettings().size) == ("from-file", 3)


def test_the_environment_wins_over_the_file_and_arguments_over_both(
    settings_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVIA_EXAMPLE_COLOUR", "from-env")
    assert ExampleSettings().colour == "from-env"
    assert ExampleSettings().size == 3  # still from the file
    assert ExampleSettings(colour="from-argument").colour == "from-argument"


def test_the_path_is_looked_up_each_time_settings_are_built(
    settings_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ExampleSettings().colour == "from-file"
    other = tmp_path / "other.toml"
    other.write_text('colour = "other-file"\n')
    monkeypatch.setenv("JAVIA_EXAMPLE_FILE", str(other))
    assert ExampleSettings().colour == "other-file"


def test_no_path_or_a_missing_file_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVIA_EXAMPLE_FILE", raising=False)
    assert ExampleSettings().colour == "default"
    monkeypatch.setenv("JAVIA_EXAMPLE_FILE", str(tmp_path / "absent.toml"))
    assert ExampleSettings().colour == "default"
