"""Settings read from keyword arguments over the environment over a TOML file.

Every javia settings class (the server's, the Supabase backend's, the
operator's, the agent's) reads its values in the same order, highest priority
first: keyword arguments, then environment variables (the class's
``env_prefix``, ``JAVIA_``), then a TOML file. ``.env`` files and secret
directories are not read. A missing TOML file is simply not read.

This module imports only pydantic-settings, so the agent (``javia_agent``,
which a Pi installs without the server's dependencies) may use it too.

Use :class:`EnvOverTomlSettings` as the base class and name the file in
:meth:`~EnvOverTomlSettings.toml_config_path`, or call
:func:`env_over_toml_sources` from your own ``settings_customise_sources``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

__all__ = ["EnvOverTomlSettings", "env_over_toml_sources"]


def env_over_toml_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    toml_file: Path | None,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources, highest priority first: keyword arguments, environment, ``toml_file``.

    Args:
        settings_cls: the settings class being built (as pydantic-settings passes it).
        init_settings: the keyword-argument source pydantic-settings passes.
        env_settings: the environment source pydantic-settings passes.
        toml_file: the TOML file to read last; None reads no file (nor does a
            path where no file exists).

    Returns:
        The tuple ``settings_customise_sources`` returns.
    """
    if toml_file is None:
        return (init_settings, env_settings)
    return (
        init_settings,
        env_settings,
        TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
    )


class EnvOverTomlSettings(BaseSettings):
    """Settings from keyword arguments over the environment over :meth:`toml_config_path`.

    Subclasses set ``model_config`` (``env_prefix``, ``extra``) as usual and
    override :meth:`toml_config_path`; it is called each time settings are
    built, so a changed ``JAVIA_CONFIG``-style variable takes effect at once.
    """

    @classmethod
    def toml_config_path(cls) -> Path | None:
        """The TOML file to read; None (the default) reads none."""
        return None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments over the environment over :meth:`toml_config_path`."""
        return env_over_toml_sources(
            settings_cls, init_settings, env_settings, cls.toml_config_path()
        )
