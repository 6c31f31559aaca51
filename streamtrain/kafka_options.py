"""Connection options every Kafka client of streamtrain passes through (security included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from streamtrain.config import KafkaSettings

KafkaClient = Literal["kafka-python", "confluent"]
KafkaClientChoice = Literal["auto", "kafka-python", "confluent"]


def kafka_client_options(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for bootstrap, identity, TLS and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            options[name] = str(value)
    return options


# kafka-python keyword -> librdkafka property, for the keywords kafka_client_options writes.
_LIBRDKAFKA_NAMES = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    # librdkafka's per-request network timeout; its request.timeout.ms is producer-only.
    "request_timeout_ms": "socket.timeout.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
}


def librdkafka_options(client_options: Mapping[str, Any]) -> dict[str, Any]:
    """The librdkafka (confluent-kafka) configuration equal to kafka-python ``client_options``.

    One mapping for both clients, so every option a user sets reaches whichever client reads.

    >>> librdkafka_options({"bootstrap_servers": ["a:9092", "b:9092"], "client_id": "x"})
    {'bootstrap.servers': 'a:9092,b:9092', 'client.id': 'x'}
    """
    unknown = sorted(set(client_options) - {"bootstrap_servers", *_LIBRDKAFKA_NAMES})
    if unknown:
        raise ValueError(
            f"client options {unknown} have no librdkafka equivalent here; supported: "
            f"bootstrap_servers, {', '.join(_LIBRDKAFKA_NAMES)} (or use kafka.client="
            "'kafka-python', or build a ConfluentConsumer with a librdkafka config yourself)"
        )
    config: dict[str, Any] = {}
    for name, value in client_options.items():
        if value is None:
            continue
        if name == "bootstrap_servers":
            servers = [value] if isinstance(value, str) else list(value)
            config["bootstrap.servers"] = ",".join(s.strip() for s in servers)
        else:
            config[_LIBRDKAFKA_NAMES[name]] = value
    return config


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka configuration for bootstrap, identity, TLS, SASL and the fetch wait."""
    return librdkafka_options(
        {**kafka_client_options(settings), "fetch_max_wait_ms": settings.fetch_max_wait_ms}
    )


def resolve_kafka_client(choice: KafkaClientChoice) -> KafkaClient:
    """The client library for ``kafka.client``: ``auto`` is confluent when it imports."""
    if choice != "auto":
        return choice
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent"
