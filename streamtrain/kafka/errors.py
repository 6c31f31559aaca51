"""What the Kafka wing raises that callers act on: each message is one line that says what to do."""

from __future__ import annotations

from collections.abc import Mapping


class KafkaUnreachable(ConnectionError):
    """No broker answered a call that must reach the cluster within its timeout."""

    def __init__(self, bootstrap_servers: str, doing: str, timeout_s: float) -> None:
        super().__init__(
            f"cannot reach Kafka at {bootstrap_servers} ({doing}, tried {timeout_s:g} s): "
            "start the broker or fix kafka.bootstrap_servers (STREAMTRAIN_KAFKA__BOOTSTRAP_"
            "SERVERS) and the security settings; kafka.connect_timeout_s sets how long to try"
        )


class OffsetOutOfRange(RuntimeError):
    """The log of these partitions no longer holds the consumer's position (truncated,
    deleted and re-created, or a broker that came back empty)."""

    def __init__(self, topic: str, positions: Mapping[int, int]) -> None:
        self.topic = topic
        self.positions = dict(positions)
        super().__init__(
            f"offsets {self.positions} are out of range in {topic!r} (partition -> position)"
        )
