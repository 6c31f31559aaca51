"""Kafka ingest: assignment, poll, bulk decode and validation, dead letters, exact batches.

The trainer needs :class:`KafkaSampleSource` and ``ingest.device.to_device``; the rest is the
parts. ``ingest.device`` (torch) is not imported here: the join uses the dead-letter sink and
must start without torch (a `streamtrain join` process starts ~2 s of CPU sooner).
"""

from streamtrain.ingest.batch_deadline import MicroBatchPolicy
from streamtrain.ingest.deadletter import (
    ERROR_HEADER,
    SOURCE_HEADER,
    DeadLetterSink,
    KafkaDeadLetter,
    LogDeadLetter,
)
from streamtrain.ingest.decode import DecodedChunk, decode_records
from streamtrain.ingest.options import SourceOptions
from streamtrain.ingest.source import KafkaSampleSource
from streamtrain.kafka.records import KafkaRecord

__all__ = [
    "ERROR_HEADER",
    "SOURCE_HEADER",
    "DeadLetterSink",
    "DecodedChunk",
    "KafkaDeadLetter",
    "KafkaRecord",
    "KafkaSampleSource",
    "LogDeadLetter",
    "MicroBatchPolicy",
    "SourceOptions",
    "decode_records",
]
