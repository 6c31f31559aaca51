"""The samples topic as the join sees it: where it ends, and what a join partition emitted.

Every sample the join emits carries two headers: ``streamtrain-join`` (``<predictions
topic>/<partition>``, the join partition that emitted it) and ``streamtrain-join-outcome``
(``joined`` or ``default_label``); its key is the request id. After a restart the join reads
the samples topic from the ends recorded in its checkpoint and collects, per join partition,
the ids it already emitted (see :mod:`streamtrain.join.joiner` for the ordering argument).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from streamtrain.join.partition_state import Outcome
from streamtrain.kafka import KafkaConnection, record_consumer
from streamtrain.kafka.consumer import RecordConsumer, TopicNotFound
from streamtrain.kafka.watermark import true_ends

JOIN_HEADER = "streamtrain-join"
OUTCOME_HEADER = "streamtrain-join-outcome"
_OUTCOMES: dict[bytes, Outcome] = {b"joined": "joined", b"default_label": "default_label"}
_POLL_MS = 100


class SamplesLogTimeout(TimeoutError):
    """The samples topic did not answer (its ends, or the records up to them) in time."""


def join_tag(predictions_topic: str, partition: int) -> str:
    """The ``streamtrain-join`` header value of samples emitted by join partition ``partition``."""
    return f"{predictions_topic}/{partition}"


class SamplesLog:
    """Reads the samples topic ``topic`` (all partitions) without a consumer group.

    >>> log = SamplesLog(kafka, "samples")  # doctest: +SKIP
    >>> ends = log.ends()  # doctest: +SKIP
    >>> log.emitted_since({"predictions/0": ends})  # doctest: +SKIP
    {'predictions/0': {}}
    """

    def __init__(self, kafka: KafkaConnection, topic: str, timeout_s: float = 30.0) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        self._consumer: RecordConsumer = record_consumer(kafka, topic=topic)
        self._partitions: tuple[int, ...] = ()

    def _refresh(self) -> tuple[int, ...]:
        found = self._consumer.partitions_of_topic()
        if found != self._partitions:
            self._partitions = found
            self._consumer.assign(found)
        return found

    def ends(self) -> dict[int, int]:
        """Samples partition -> its true end (high watermark), now."""
        partitions = self._refresh()
        found = true_ends(self._consumer, partitions, time.monotonic() + self._timeout_s)
        if found is None:
            raise SamplesLogTimeout(
                f"no fetch response from {self.topic!r} within {self._timeout_s:.0f} s"
            )
        return found

    def lost_since(self, checkpointed: Mapping[int, int]) -> str | None:
        """Why the topic no longer holds what it held at a checkpoint whose ends were
        ``checkpointed`` (a partition now ending before its checkpointed end, or the topic
        gone), or None when it still does. Ends never move back while a log is kept."""
        try:
            now = self.ends()
        except TopicNotFound:
            return f"the topic {self.topic!r} no longer exists"
        return moved_back(self.topic, checkpointed, now)

    def emitted_since(
        self, starts: Mapping[str, Mapping[int, int]]
    ) -> dict[str, dict[str, Outcome]]:
        """For each join tag, the request ids (and outcomes) of samples carrying that tag at
        or after its start offset (per samples partition; a partition missing from a start
        map, one added to the topic later, is read from its beginning)."""
        found: dict[str, dict[str, Outcome]] = {tag: {} for tag in starts}
        if not starts:
            return found
        ends = self.ends()
        first = {
            p: min(s.get(p, self._consumer.log_start(p)) for s in starts.values()) for p in ends
        }
        todo = {p for p in ends if first[p] < ends[p]}
        for p in todo:
            self._consumer.seek(p, first[p])
        deadline = time.monotonic() + self._timeout_s
        while todo:
            if time.monotonic() >= deadline:
                raise SamplesLogTimeout(
                    f"reading {self.topic!r} up to {ends} did not finish in {self._timeout_s:.0f} s"
                )
            for record in self._consumer.poll(_POLL_MS, 10_000):
                p = record.partition
                if p not in todo or record.offset >= ends[p]:
                    continue
                tag, outcome = _join_headers(record.headers)
                if tag is None or tag not in starts or record.key is None:
                    continue
                if record.offset >= starts[tag].get(p, 0) and outcome is not None:
                    found[tag][record.key.decode()] = outcome
            todo = {p for p in todo if self._consumer.position(p) < ends[p]}
        return found

    def close(self) -> None:
        self._consumer.close()


def moved_back(topic: str, checkpointed: Mapping[int, int], now: Mapping[int, int]) -> str | None:
    """Why ends ``now`` show that ``topic`` lost records it held at ``checkpointed``, or None."""
    for p, end in sorted(checkpointed.items()):
        if now.get(p, -1) < end:
            found = "is gone" if p not in now else f"ends at {now[p]}"
            return f"partition {p} of {topic!r} {found}, before the checkpointed {end}"
    return None


def _join_headers(
    headers: Sequence[tuple[str, bytes | None]] | None,
) -> tuple[str | None, Outcome | None]:
    tag: str | None = None
    outcome: Outcome | None = None
    for name, value in headers or ():
        if name == JOIN_HEADER and value is not None:
            tag = bytes(value).decode(errors="replace")
        elif name == OUTCOME_HEADER and value is not None:
            outcome = _OUTCOMES.get(bytes(value))
    return tag, outcome
