"""Topic administration over either client library, bounded by the connection's timeout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from streamtrain.kafka.connection import KafkaConnection
from streamtrain.kafka.errors import KafkaUnreachable


class TopicAdminError(RuntimeError):
    """The cluster refused to create a topic (authorization, policy, invalid settings)."""


def create_topics(kafka: KafkaConnection | str, names: Iterable[str], partitions: int = 1) -> None:
    """Create topics that do not exist yet; existing ones are left as they are.

    ``kafka`` is a connection (TLS/SASL, client library), or a plain ``host:port`` for a
    local unsecured broker. Raises :class:`KafkaUnreachable` when no broker answers within
    ``connect_timeout_s``.

    >>> create_topics("127.0.0.1:9092", ["samples"], partitions=3)  # doctest: +SKIP
    """
    connection = KafkaConnection(kafka) if isinstance(kafka, str) else kafka
    wanted = list(dict.fromkeys(names))
    if connection.client == "confluent":
        _create_confluent(connection, wanted, partitions)
    else:
        _create_kafka_python(connection, wanted, partitions)


def _create_confluent(kafka: KafkaConnection, names: list[str], partitions: int) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from streamtrain.kafka.client_logs import quiet_librdkafka

    admin = AdminClient(quiet_librdkafka(kafka.librdkafka({"client.id": "streamtrain-admin"})))
    try:
        existing = set(admin.list_topics(timeout=kafka.connect_timeout_s).topics)
    except KafkaException:
        raise KafkaUnreachable(
            kafka.bootstrap_servers, "listing topics", kafka.connect_timeout_s
        ) from None
    missing = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    missing = [t for t in missing if t.topic not in existing]
    if not missing:
        return
    futures = admin.create_topics(missing, request_timeout=kafka.connect_timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=kafka.connect_timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicAdminError(f"creating topic {name!r} failed: {error.str()}") from None


def _create_kafka_python(kafka: KafkaConnection, names: list[str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

    from streamtrain.kafka.client_logs import route_kafka_python_logs

    route_kafka_python_logs()

    timeout_ms = int(kafka.connect_timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            **kafka.kafka_python(client_id="streamtrain-admin", bootstrap_timeout_ms=timeout_ms)
        )
    except KafkaTimeoutError:
        raise KafkaUnreachable(
            kafka.bootstrap_servers, "connecting the admin client", kafka.connect_timeout_s
        ) from None
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(n, num_partitions=partitions, replication_factor=1)
            for n in names
            if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, timeout_ms=timeout_ms)
    except TopicAlreadyExistsError:
        pass
    except KafkaError as exc:
        raise TopicAdminError(f"creating topics {names} failed: {exc}") from None
    finally:
        admin.close()
