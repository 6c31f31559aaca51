"""streamtrain's Kafka wing: every client, its options and topic administration live here.

* :mod:`~streamtrain.kafka.connection`: settings -> options of kafka-python or librdkafka.
* :mod:`~streamtrain.kafka.factory`: consumers, producers and partition readers, for the
  library ``kafka.client`` selects.
* :mod:`~streamtrain.kafka.group_consumer`: the join's group member over two co-partitioned
  topics (the only group subscription).
* :mod:`~streamtrain.kafka.admin`: topic creation.
* :mod:`~streamtrain.kafka.watermark`: the embedded broker's high-watermark quirk, handled once.
* :mod:`~streamtrain.kafka.reachability` (+ :mod:`~streamtrain.kafka.client_logs`): whether
  the cluster answers, one log line per change instead of the libraries' per-attempt lines.
"""

from streamtrain.kafka.admin import TopicAdminError, create_topics
from streamtrain.kafka.connection import (
    KafkaClient,
    KafkaConfigError,
    KafkaConnection,
    resolve_kafka_client,
)
from streamtrain.kafka.consumer import RecordConsumer, TopicNotFound
from streamtrain.kafka.errors import KafkaUnreachable, OffsetOutOfRange
from streamtrain.kafka.factory import (
    co_partitioned_group,
    partition_reader,
    record_consumer,
    record_producer,
)
from streamtrain.kafka.partition_reader import PartitionReader, ReadTimeout
from streamtrain.kafka.producer import ProduceTimeout, RecordProducer

__all__ = [
    "KafkaClient",
    "KafkaConfigError",
    "KafkaConnection",
    "KafkaUnreachable",
    "OffsetOutOfRange",
    "PartitionReader",
    "ProduceTimeout",
    "ReadTimeout",
    "RecordConsumer",
    "RecordProducer",
    "TopicAdminError",
    "TopicNotFound",
    "co_partitioned_group",
    "create_topics",
    "partition_reader",
    "record_consumer",
    "record_producer",
    "resolve_kafka_client",
]
