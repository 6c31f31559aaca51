"""Hold the cyclic garbage collector off while one poll's worth of small objects is built.

Decoding a poll allocates several container objects per record (header lists, message tuples,
the lists a JSON decoder fills) and none of them form cycles. Each allocation counts towards
the next collection, and the older generations' collections traverse every tracked object in
the process (torch's included): measured, that is ~0.7 µs of a ~3 µs JSON record and 1.7 of
2.0 µs of a confluent message's header list. Pausing for the length of one poll keeps memory
bounded by that poll.

``KafkaSampleSource.next_batch`` holds it off for the whole call: each poll builds a tracked
object per record (a confluent ``Message``, a kafka-python ``ConsumerRecord``), and while a
batch fills, every collection they trigger traverses all records buffered so far again;
measured on a loaded 2-core machine, ~1.1 of ~2.9 µs of CPU per binary record (bench/README.md
"Ingest"). A batch's records are freed by reference counting once it is cut, mostly before the
GC is back; the confluent records still buffered after the call hold no tracked object per
record (``kafka.confluent_records``: their messages are freed once decoded), so the collection
that follows the pause does not traverse them. The pause lasts one call (about
``max_wait_ms``; ``max_partition_idle_ms`` at most while a partition lags). The GC switch is
process-wide: a training thread running meanwhile collects later, not less.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic GC inside the block; re-enable it after only if it was enabled.

    >>> with gc_paused():
    ...     gc.isenabled()
    False
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
