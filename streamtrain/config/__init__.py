"""One frozen settings tree for every streamtrain process.

Sources, lowest priority first: defaults, a YAML file (``--config path``), environment variables
(``STREAMTRAIN_`` prefix, ``__`` between nested names, e.g.
``STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``), then CLI flags. Classes inside the package
never see this tree: ``streamtrain.cli`` turns it into plain typed arguments.

>>> settings = load_settings(overrides={"model": {"input_shape": [8]}})
>>> settings.model.input_shape
(8,)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from streamtrain.config.sections import (
    IngestSettings,
    KafkaSettings,
    ModelSettings,
    OptimizerSettings,
    SparseFeatureSettings,
    Task,
    TopicSettings,
    TrainSettings,
)
from streamtrain.config.services import JoinSettings, ServeSettings
from streamtrain.config_report import ConfigError as ConfigError  # re-exported
from streamtrain.config_report import (
    SettingsSources,
    describe_problems,
    read_yaml_file,
    unknown_variables,
)

__all__ = [
    "ConfigError",
    "IngestSettings",
    "JoinSettings",
    "KafkaSettings",
    "ModelSettings",
    "OptimizerSettings",
    "ServeSettings",
    "Settings",
    "SparseFeatureSettings",
    "Task",
    "TopicSettings",
    "TrainSettings",
    "load_settings",
    "unknown_env_warnings",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMTRAIN_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    ingest: IngestSettings = IngestSettings()
    model: ModelSettings = ModelSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    join: JoinSettings = JoinSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


class _YamlSource(PydanticBaseSettingsSource):
    data: dict[str, Any] = {}  # noqa: RUF012  (set by load_settings around one build)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _YamlSource.data


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings tree; raise ConfigError with one line per bad field.

    ``flags`` maps a dotted field (``kafka.bootstrap_servers``) to the CLI flag that set it in
    ``overrides``, so an error names the flag rather than the variable.
    """
    data, text = read_yaml_file(config_file) if config_file is not None else ({}, "")
    _YamlSource.data = data
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        sources = SettingsSources(
            flags=flags or {},
            environ=dict(os.environ),
            overrides=overrides or {},
            config_file=config_file,
            yaml_text=text,
        )
        raise ConfigError(describe_problems(exc, sources, Settings)) from exc
    finally:
        _YamlSource.data = {}


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``STREAMTRAIN_*`` variable that sets nothing, naming the nearest valid
    variable (``STREAMTRAIN_MODLE__NAME``: did you mean ``STREAMTRAIN_MODEL__NAME``?)."""
    return unknown_variables(os.environ if environ is None else environ, Settings)
