"""KafkaSettings to kafka-python keywords and to librdkafka config; client selection."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from streamtrain.config import KafkaSettings, load_settings
from streamtrain.kafka_options import (
    kafka_client_options,
    librdkafka_config,
    librdkafka_options,
    resolve_kafka_client,
)


def test_plaintext_settings_map_to_librdkafka() -> None:
    settings = KafkaSettings(bootstrap_servers="a:9092, b:9093", client_id="trainer-1")
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "a:9092,b:9093",
        "client.id": "trainer-1",
        "security.protocol": "PLAINTEXT",
        "socket.timeout.ms": 30_000,
        "fetch.wait.max.ms": 10,
    }


def test_sasl_ssl_settings_map_every_field(tmp_path: Any) -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9094",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password="s3cret",
        ssl_cafile=tmp_path / "ca.pem",
        ssl_certfile=tmp_path / "client.pem",
        ssl_keyfile=tmp_path / "client.key",
        fetch_max_wait_ms=25,
        request_timeout_ms=12_000,
    )
    config = librdkafka_config(settings)
    assert config == {
        "bootstrap.servers": "kafka:9094",
        "client.id": "streamtrain",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "socket.timeout.ms": 12_000,
        "fetch.wait.max.ms": 25,
    }
    # The same settings reach kafka-python: one source of truth for both clients.
    assert kafka_client_options(settings)["sasl_plain_password"] == "s3cret"


def test_librdkafka_config_is_accepted_by_confluent_kafka() -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    # Constructing a consumer validates every property name and value (no connection yet).
    consumer = confluent_kafka.Consumer({**librdkafka_config(settings), "group.id": "g"})
    consumer.close()


def test_unknown_client_option_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\['api_version'\] have no librdkafka equivalent"):
        librdkafka_options({"bootstrap_servers": "a:1", "api_version": (2, 0)})


def test_string_bootstrap_and_none_values() -> None:
    assert librdkafka_options({"bootstrap_servers": "a:1", "client_id": None}) == {
        "bootstrap.servers": "a:1"
    }


def test_client_setting_and_auto_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().kafka.client == "auto"
    assert resolve_kafka_client("kafka-python") == "kafka-python"
    assert resolve_kafka_client("confluent") == "confluent"
    real_import = builtins.__import__

    def no_confluent(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "confluent_kafka":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_confluent)
    assert resolve_kafka_client("auto") == "kafka-python"
    monkeypatch.setattr(builtins, "__import__", real_import)
    pytest.importorskip("confluent_kafka")
    assert resolve_kafka_client("auto") == "confluent"


def test_bad_client_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="client"):
        KafkaSettings(client="rdkafka")
