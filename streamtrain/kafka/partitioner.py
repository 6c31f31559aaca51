"""The one rule by which streamtrain places a keyed record on a partition: murmur2.

The join meets a label and its prediction only when both sit on the same partition number
(:mod:`streamtrain.join`), so the prediction log and every label producer must place a key by
the same rule. The client libraries disagree by default: the Java client and kafka-python
hash the key with murmur2, librdkafka (confluent-kafka, kcat) with CRC32
(``consistent_random``). streamtrain's rule is the Java client's, which most applications that
send labels use:

    partition = (murmur2(key) & 0x7fffffff) % partition_count

Every producer built by :func:`streamtrain.kafka.factory.record_producer` follows it whatever
``kafka.client`` is: kafka-python by its default partitioner, librdkafka by
``partitioner=murmur2_random`` (:data:`LIBRDKAFKA_PARTITIONER`; a record without a key goes
to a random partition in both). docs/labels.md shows the setting for kcat, confluent-kafka and
Java. :func:`partition_for` computes the rule with kafka-python's murmur2 (the Java client's
port), so the join can tell a label placed by another rule (:mod:`streamtrain.join.label_routing`).

>>> [partition_for(f"r-{i}".encode(), 2) for i in range(6)]
[1, 1, 1, 0, 1, 1]
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2

KEY_PARTITIONER = "murmur2"
"""The rule's name, as docs and log lines say it."""

LIBRDKAFKA_PARTITIONER = "murmur2_random"
"""librdkafka's ``partitioner`` value for the rule (murmur2 for keys, random for no key)."""


def partition_for(key: bytes, partition_count: int) -> int:
    """The partition the rule gives ``key`` among ``partition_count`` partitions."""
    if partition_count < 1:
        raise ValueError(f"partition_count={partition_count}: a topic has at least 1 partition")
    return (int(murmur2(key)) & 0x7FFFFFFF) % partition_count
