"""Topic administration over either client library, bounded by the connection's timeout."""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from collections.abc import Iterable

from streamtrain.kafka.connection import KafkaConnection
from streamtrain.kafka.errors import KafkaUnreachable

log = logging.getLogger(__name__)


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


def topic_id(kafka: KafkaConnection, topic: str, timeout_s: float = 5.0) -> str | None:
    """``topic``'s id (KIP-516) as a UUID string, where the broker reports one; None otherwise.

    A deleted and re-created topic gets a new id, so a reader resuming a stored position can
    tell the logs apart even where the record at that position is byte-identical
    (:mod:`streamtrain.ingest.log_watch`). Optional by nature: an older broker, an all-zero id
    or any error reading it gives None, and the record fingerprints still apply.
    """
    try:
        if kafka.client == "confluent":
            from confluent_kafka import TopicCollection
            from confluent_kafka.admin import AdminClient

            from streamtrain.kafka.client_logs import quiet_librdkafka

            admin = AdminClient(
                quiet_librdkafka(kafka.librdkafka({"client.id": "streamtrain-admin"}))
            )
            found = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)
            raw = str(found[topic].result(timeout=timeout_s).topic_id)  # base64, 16 bytes
            value = uuid.UUID(bytes=base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        else:
            from kafka.admin import KafkaAdminClient

            client = KafkaAdminClient(
                **kafka.kafka_python(request_timeout_ms=int(timeout_s * 1000))
            )
            try:
                value = uuid.UUID(str(client.describe_topics([topic])[0]["topic_id"]))
            finally:
                client.close()
    except Exception as exc:
        log.debug("no topic id for %s: %s", topic, exc)
        return None
    return None if value.int == 0 else str(value)
