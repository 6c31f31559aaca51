"""KafkaSettings to kafka-python keywords and to librdkafka config; extra options; client choice."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from streamtrain.config import KafkaSettings, load_settings
from streamtrain.kafka import KafkaConfigError, KafkaConnection, resolve_kafka_client


def test_plaintext_settings_map_to_librdkafka() -> None:
    settings = KafkaSettings(bootstrap_servers="a:9092, b:9093", client_id="trainer-1")
    assert KafkaConnection.from_settings(settings).librdkafka() == {
        "bootstrap.servers": "a:9092,b:9093",
        "client.id": "trainer-1",
        "security.protocol": "PLAINTEXT",
        "socket.timeout.ms": 30_000,
    }


def test_sasl_ssl_settings_map_every_field(tmp_path: Any) -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9094",
        client="kafka-python",  # validates offline without reading the PEM files
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password="s3cret",
        ssl_cafile=tmp_path / "ca.pem",
        ssl_certfile=tmp_path / "client.pem",
        ssl_keyfile=tmp_path / "client.key",
        request_timeout_ms=12_000,
    )
    connection = KafkaConnection.from_settings(settings)
    assert connection.kafka_python()["sasl_plain_password"] == "s3cret"
    assert connection.kafka_python()["bootstrap_servers"] == ["kafka:9094"]
    # The same settings in librdkafka's names: one source of truth for both clients.
    assert connection.librdkafka() == {
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
    }


def test_confluent_validation_reads_the_tls_files(tmp_path: Any) -> None:
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(KafkaConfigError, match=r"ssl\.ca\.location") as info:
        KafkaConnection.from_settings(settings)
    assert "\n" not in str(info.value)


def test_extra_reaches_only_the_chosen_library_and_roles_win() -> None:
    confluent = KafkaConnection("a:1", client="confluent", extra={"socket.keepalive.enable": True})
    assert confluent.librdkafka({"group.id": "g"})["socket.keepalive.enable"] is True
    assert "socket.keepalive.enable" not in confluent.kafka_python()
    # What a client needs for its semantics is set after extra and cannot be overridden.
    pinned = KafkaConnection("a:1", client="confluent", extra={"enable.auto.commit": True})
    assert pinned.librdkafka({"enable.auto.commit": False})["enable.auto.commit"] is False
    kafka_python = KafkaConnection(
        "a:1", client="kafka-python", extra={"connections_max_idle_ms": 5}
    )
    assert kafka_python.kafka_python()["connections_max_idle_ms"] == 5
    assert "connections_max_idle_ms" not in kafka_python.librdkafka()


def test_unknown_extra_key_is_a_one_line_error_naming_it() -> None:
    for client, key in (("confluent", "fetch.wiat.max.ms"), ("kafka-python", "fetch_wiat_ms")):
        settings = KafkaSettings(client=client, extra={key: 5})
        with pytest.raises(KafkaConfigError) as info:
            KafkaConnection.from_settings(settings)
        message = str(info.value)
        assert key in message and "\n" not in message, message


def test_bad_extra_value_names_the_property() -> None:
    settings = KafkaSettings(extra={"socket.timeout.ms": "soon"})
    with pytest.raises(KafkaConfigError, match=r"socket\.timeout\.ms"):
        KafkaConnection.from_settings(settings)


def test_oauthbearer_and_gssapi_reach_librdkafka() -> None:
    oauth = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        extra={
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": "trainer",
            "sasl.oauthbearer.client.secret": "x",
            "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
        },
    )
    config = KafkaConnection.from_settings(oauth).librdkafka()
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert config["sasl.oauthbearer.method"] == "oidc"
    gssapi = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI", sasl_kerberos_service_name="kf"
    )
    try:
        as_confluent = KafkaConnection.from_settings(gssapi).librdkafka()
    except KafkaConfigError as exc:  # the confluent-kafka wheel's librdkafka lacks libsasl2
        assert "GSSAPI" in str(exc)
    else:
        assert as_confluent["sasl.kerberos.service.name"] == "kf"
    as_kafka_python = KafkaConnection.from_settings(
        gssapi.model_copy(update={"client": "kafka-python"})
    )
    assert as_kafka_python.kafka_python()["sasl_kerberos_service_name"] == "kf"


def test_oauthbearer_with_kafka_python_needs_a_token_provider() -> None:
    settings = KafkaSettings(
        client="kafka-python", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER"
    )
    with pytest.raises(KafkaConfigError, match="token provider"):
        KafkaConnection.from_settings(settings)


def test_extra_values_are_never_echoed_in_config_errors() -> None:
    from streamtrain.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"kafka": {"extra": {"sasl.oauthbearer.client.secret": [1]}}})
    assert "[1]" not in str(info.value)


def test_client_setting_default_and_auto_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMTRAIN_KAFKA__CLIENT", raising=False)
    assert load_settings().kafka.client == "confluent"
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
    assert resolve_kafka_client("auto") == "confluent"


def test_bad_client_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="client"):
        KafkaSettings(client="rdkafka")


def test_producer_linger_setting_reaches_producers_that_name_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import confluent_kafka

    from streamtrain.kafka.factory import record_producer

    seen: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, config: dict[str, Any]) -> None:
            seen.append(config)

    monkeypatch.setattr(confluent_kafka, "Producer", Recording)
    kafka = KafkaConnection.from_settings(
        KafkaSettings(bootstrap_servers="127.0.0.1:9092", producer_linger_ms=250)
    )
    assert kafka.producer_linger_ms == 250
    record_producer(kafka)
    record_producer(kafka, linger_ms=0)  # snapshots name theirs
    # (the first Producer the factory opens only checks the connection settings)
    assert [c["linger.ms"] for c in seen if "linger.ms" in c] == [250, 0]
