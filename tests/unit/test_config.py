from __future__ import annotations

from pathlib import Path

import pytest

from streamtrain.config import ConfigError, load_settings


def test_defaults_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.kafka.client_id = "x"  # type: ignore[misc]


def test_env_overrides_yaml_and_flags_override_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  bootstrap_servers: yamlhost:1\n  client_id: from-yaml\n")
    monkeypatch.setenv("STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS", "envhost:2")
    settings = load_settings(config)
    assert settings.kafka.bootstrap_servers == "envhost:2"
    assert settings.kafka.client_id == "from-yaml"
    flagged = load_settings(config, {"kafka": {"bootstrap_servers": "flaghost:3"}})
    assert flagged.kafka.bootstrap_servers == "flaghost:3"


def test_invalid_value_names_field_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRAIN_INGEST__MAX_BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "ingest.max_batch_size" in str(info.value)
    assert "STREAMTRAIN_INGEST__MAX_BATCH_SIZE" in str(info.value)


def test_bad_bootstrap_server_explains_form() -> None:
    with pytest.raises(ConfigError, match="host:port"):
        load_settings(overrides={"kafka": {"bootstrap_servers": "nohost"}})


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  bootstrap: x:1\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap"):
        load_settings(config)


def test_non_mapping_yaml_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(config)


def test_secret_is_hidden() -> None:
    settings = load_settings(overrides={"kafka": {"sasl_password": "hunter2"}})
    assert "hunter2" not in repr(settings)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


def test_misspelt_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRAIN_KAFKA__SASL_PASSWRD", "hunter2")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "kafka.sasl_passwrd" in str(info.value)
    assert "hunter2" not in str(info.value)
