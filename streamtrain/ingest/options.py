"""How a :class:`~streamtrain.ingest.source.KafkaSampleSource` reads: one frozen value.

Every knob of the source that comes from the settings tree, built in one place
(:meth:`SourceOptions.from_settings`), so the source's constructor takes what it reads from
(spec, topic, group, connection) plus this value, and a new ingest setting is added here and in
``config/`` only. The defaults are the settings' defaults, for tests and benchmarks that build a
source by hand.

>>> from streamtrain.config import Settings
>>> options = SourceOptions.from_settings(Settings())
>>> options.start_from, options.max_batch_size, options.on_offset_reset
('committed', 256, 'earliest')
>>> SourceOptions(start_from="newest")
Traceback (most recent call last):
...
ValueError: ingest.start_from='newest'; expected 'committed', 'earliest' or 'latest'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamtrain.config import Settings
from streamtrain.ingest.decode import Codec
from streamtrain.ingest.log_watch import OnOffsetReset

StartFrom = Literal["committed", "earliest", "latest"]


@dataclass(frozen=True)
class SourceOptions:
    """The source's reading options (docs/configuration.md, ``ingest``, describes each)."""

    partitions: tuple[int, ...] | None = None  # None: every partition of the topic
    start_from: StartFrom = "committed"
    max_batch_size: int = 256
    max_wait_ms: int = 50
    max_record_bytes: int = 1_048_576
    dead_letter_topic: str | None = None  # None: rejects are only logged
    fetch_max_wait_ms: int = 10  # kafka.fetch_max_wait_ms
    deterministic_batches: bool = True
    max_partition_idle_ms: int = 1000
    on_offset_reset: OnOffsetReset = "earliest"
    reject_summary_every_s: float = 30.0
    all_rejected_alarm_s: float = 60.0
    codec: Codec = "auto"  # auto: by each record's content-type header
    decode_workers: int | str = "auto"  # JSON decoders (decode_pool): 1 on <= 2 cores

    def __post_init__(self) -> None:
        # The settings tree checks these already; a hand-built value is checked here.
        if self.start_from not in ("committed", "earliest", "latest"):
            raise ValueError(
                f"ingest.start_from={self.start_from!r}; expected 'committed', 'earliest' or "
                "'latest'"
            )
        if self.on_offset_reset not in ("earliest", "latest", "fail"):
            raise ValueError(
                f"ingest.on_offset_reset={self.on_offset_reset!r}; expected 'earliest', "
                "'latest' or 'fail'"
            )
        if self.codec not in ("auto", "binary", "json"):
            raise ValueError(f"ingest.codec={self.codec!r}; expected 'auto', 'binary' or 'json'")
        if self.decode_workers != "auto" and not (
            isinstance(self.decode_workers, int) and 1 <= self.decode_workers <= 64
        ):
            raise ValueError(
                f"ingest.decode_workers={self.decode_workers!r}; expected 'auto' or 1 to 64"
            )
        if self.max_batch_size < 1:
            raise ValueError(f"ingest.max_batch_size={self.max_batch_size}; expected >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceOptions:
        """The options of ``settings.ingest`` (plus the dead-letter topic and the Kafka fetch
        wait they depend on)."""
        ingest = settings.ingest
        return cls(
            partitions=ingest.partitions,
            start_from=ingest.start_from,
            max_batch_size=ingest.max_batch_size,
            max_wait_ms=ingest.max_wait_ms,
            max_record_bytes=ingest.max_record_bytes,
            dead_letter_topic=settings.topics.dead_letter,
            fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
            deterministic_batches=ingest.deterministic_batches,
            max_partition_idle_ms=ingest.max_partition_idle_ms,
            on_offset_reset=ingest.on_offset_reset,
            reject_summary_every_s=ingest.reject_summary_every_s,
            all_rejected_alarm_s=ingest.all_rejected_alarm_s,
            codec=ingest.codec,
            decode_workers=ingest.decode_workers,
        )
