"""How to reach Kafka, once: settings -> options of whichever client library is chosen.

A :class:`KafkaConnection` holds the connection options in kafka-python's names (bootstrap,
identity, TLS, SASL, timeouts) plus ``extra``, raw options of the chosen library passed through
unchanged. :meth:`KafkaConnection.kafka_python` and :meth:`KafkaConnection.librdkafka` give
the full option set of each library; :mod:`streamtrain.kafka.factory` is their only caller.

Precedence, lowest first: the translated connection options, ``extra``, then what a client
sets for its own semantics (group id, auto-commit off, ...), which ``extra`` cannot override.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamtrain.config import KafkaSettings

KafkaClient = Literal["kafka-python", "confluent"]
KafkaClientChoice = Literal["auto", "kafka-python", "confluent"]

# kafka-python keyword -> librdkafka property, for every keyword a connection may hold.
_LIBRDKAFKA_NAMES = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    # librdkafka's per-request network timeout; its request.timeout.ms is producer-only.
    "request_timeout_ms": "socket.timeout.ms",
}


class KafkaConfigError(ValueError):
    """Connection settings the chosen client library refuses; the message names the key."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where Kafka is and how to log in, for one client library.

    >>> KafkaConnection("a:9092,b:9092", client="confluent").librdkafka()
    {'bootstrap.servers': 'a:9092,b:9092', 'client.id': 'streamtrain'}
    >>> KafkaConnection("a:9092", client="kafka-python").kafka_python()["bootstrap_servers"]
    ['a:9092']
    """

    bootstrap_servers: str
    client: KafkaClient = "confluent"
    options: Mapping[str, Any] = field(default_factory=lambda: {"client_id": "streamtrain"})
    extra: Mapping[str, Any] = field(default_factory=dict)
    # How long a call that must reach the cluster (metadata, topic creation) may try.
    connect_timeout_s: float = 30.0
    # The linger of producers that name none (kafka.producer_linger_ms); the embedded broker's
    # long runs want batches of 250 ms (streamtrain.broker.CLIENT_ENV).
    producer_linger_ms: int = 5

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaConnection:
        """The connection the ``kafka`` settings section describes; raises
        :class:`KafkaConfigError` when ``kafka.extra`` names an option the library lacks."""
        connection = cls(
            bootstrap_servers=settings.bootstrap_servers,
            client=resolve_kafka_client(settings.client),
            options=_connection_options(settings),
            extra=dict(settings.extra),
            connect_timeout_s=settings.connect_timeout_s,
            producer_linger_ms=settings.producer_linger_ms,
        )
        connection.validate()
        return connection

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",")]

    def kafka_python(self, **semantics: Any) -> dict[str, Any]:
        """kafka-python keyword arguments: connection, then ``extra``, then ``semantics``."""
        extra = self.extra if self.client == "kafka-python" else {}
        # kafka-python bootstraps in its constructors: give up after the connect timeout.
        bootstrap = {"bootstrap_timeout_ms": int(self.connect_timeout_s * 1000)}
        return {
            "bootstrap_servers": self.servers,
            **self.options,
            **bootstrap,
            **extra,
            **semantics,
        }

    def librdkafka(self, semantics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """librdkafka configuration: connection, then ``extra``, then ``semantics``."""
        config: dict[str, Any] = {"bootstrap.servers": ",".join(self.servers)}
        for name, value in self.options.items():
            config[_LIBRDKAFKA_NAMES[name]] = value
        if self.client == "confluent":
            config.update(self.extra)
        config.update(semantics or {})
        return config

    def validate(self) -> None:
        """Check ``extra`` (and the SASL mechanism) against the chosen library, offline."""
        unknown = sorted(set(self.options) - set(_LIBRDKAFKA_NAMES))
        if unknown:
            raise KafkaConfigError(f"connection options {unknown} are not known to streamtrain")
        if self.client == "confluent":
            _check_librdkafka(self.librdkafka())
        else:
            _check_kafka_python(self.extra, self.options)


def _connection_options(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_username is not None:
            options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
        if settings.sasl_mechanism == "GSSAPI":
            options["sasl_kerberos_service_name"] = settings.sasl_kerberos_service_name
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            options[name] = str(value)
    return options


def _check_librdkafka(config: Mapping[str, Any]) -> None:
    from confluent_kafka import KafkaException, Producer

    # Building a client checks every property name and value without any network I/O
    # (bootstrap.servers left out); consumer-only properties are accepted by a producer.
    offline = {k: v for k, v in config.items() if k != "bootstrap.servers"}
    try:
        Producer({**offline, "log_level": 0})
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args else str(exc)
        raise KafkaConfigError(
            f"kafka.extra / kafka settings refused by librdkafka (kafka.client=confluent): "
            f"{detail}; see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"
        ) from None


def _check_kafka_python(extra: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    known = (
        set(KafkaConsumer.DEFAULT_CONFIG)
        | set(KafkaProducer.DEFAULT_CONFIG)
        | set(KafkaAdminClient.DEFAULT_CONFIG)
    )
    for key in sorted(extra):
        if key not in known:
            raise KafkaConfigError(
                f"kafka.extra key {key!r} is not a kafka-python option (kafka.client="
                "kafka-python); use kafka-python's keyword names such as 'sasl_oauth_token_"
                "provider' or 'connections_max_idle_ms', or set kafka.client=confluent"
            )
    if options.get("sasl_mechanism") == "OAUTHBEARER" and "sasl_oauth_token_provider" not in extra:
        raise KafkaConfigError(
            "kafka.sasl_mechanism=OAUTHBEARER with kafka.client=kafka-python needs a token "
            "provider object, which settings cannot hold; use kafka.client=confluent with "
            "kafka.extra {'sasl.oauthbearer.method': 'oidc', ...}"
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
