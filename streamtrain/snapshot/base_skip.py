"""Which base lane bases a server's tail does not read (``SnapshotSubscriber(live=...)``).

A server following the delta chain holds every version the deltas reach, so a base written
beside them (``publisher.py`` rule 4) changes nothing on it:

1. **Passed**: a base lane record of the live run at or below the live version is skipped
   (its chunks are neither spooled nor verified, its manifest not loaded).
2. **Left for later**: a base lane manifest of the live run whose chunks the tail did not see
   (on the base partition, ``writer.BASE_PARTITION``) and whose version is ahead of the live
   one is held: the delta after it carries its rows, and once the live weights pass it, it is
   dropped unread. Only if no delta passes it within ``DEFER_S`` while the tail is caught up
   (a trainer gone quiet right after a base) is it read and loaded. A server whose chain
   breaks catches up from the topic (``catch_up_order``), which finds the base anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamtrain.kafka.records import KafkaRecord
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotHeader, parse_snapshot_id

DEFER_S = 5.0


class BaseSkip:
    """The module's rules for one tail; ``live`` gives the server's live weights (None: no
    server behind the subscriber, nothing is skipped)."""

    def __init__(self, live: Callable[[], SnapshotHeader | None] | None) -> None:
        self._live = live
        self._held: tuple[KafkaRecord, wire.RecordHeader, float] | None = None

    def _of_live_run(self, header: wire.RecordHeader) -> tuple[SnapshotHeader, int] | None:
        if header.lane != wire.BASE_LANE or self._live is None:
            return None
        live, parsed = self._live(), parse_snapshot_id(header.snapshot_id)
        if live is None or parsed is None or parsed[0] != live.run_id:
            return None
        return live, parsed[1]

    def passed(self, header: wire.RecordHeader) -> bool:
        """Rule 1."""
        found = self._of_live_run(header)
        return found is not None and found[1] <= found[0].version

    def hold(self, record: KafkaRecord, header: wire.RecordHeader) -> bool:
        """Rule 2 for a manifest whose chunks the tail did not see: True when held."""
        if self._of_live_run(header) is None:
            return False
        self._held = (record, header, time.monotonic())
        return True

    def due(self, caught_up: bool) -> tuple[KafkaRecord, wire.RecordHeader] | None:
        """The held manifest once it is to be read (rule 2); None meanwhile, and for good
        once the live weights passed it."""
        if self._held is None:
            return None
        record, header, since = self._held
        if self.passed(header):
            self._held = None
            return None
        if time.monotonic() - since < DEFER_S or not caught_up:
            return None
        self._held = None
        return record, header
