"""A samples topic that lost what the join's checkpoints recorded, and what the join does then.

A broker that comes back without its data (the embedded broker after a restart, a lost volume,
a deleted and re-created topic) leaves the checkpoints describing records that no longer
exist: their samples-topic ends ``E`` lie beyond the new log's end, and their input offsets
beyond the new inputs. Reading on from them would skip the new logs' first records, and the
read-back of step 2 (:mod:`streamtrain.join.joiner`) would find nothing. ``join.on_log_lost``
says what happens instead: ``earliest`` starts over (empty state, both inputs from their
start, as a fresh ``join.state_dir`` would), ``fail`` stops the join with exit code 6.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

OnLogLost = Literal["earliest", "fail"]


class JoinLogLost(RuntimeError):
    """The samples topic no longer holds what a checkpoint saw and ``on_log_lost`` is fail."""


def latest_ends(ends: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Per samples partition, the largest of several checkpoints' ends (ends only grow)."""
    found: dict[int, int] = {}
    for one in ends:
        for p, end in one.items():
            found[p] = max(end, found.get(p, 0))
    return found


def start_over_or_fail(lost: str | None, policy: OnLogLost, state_dir: Path) -> bool:
    """Whether the join must start over: the samples topic lost records the checkpoints saw
    (``lost`` says how) and ``policy`` is earliest. Raises :class:`JoinLogLost` (one line)
    when it is fail."""
    if lost is None:
        return False
    if policy == "fail":
        raise JoinLogLost(
            f"Kafka no longer holds the join's samples ({lost}): an emptied broker, a lost "
            "volume or a re-created topic, and join.on_log_lost=fail; move join.state_dir "
            f"({state_dir}) aside to start over, or set join.on_log_lost=earliest"
        )
    log.warning(
        "Kafka no longer holds the join's samples (%s): join.on_log_lost=earliest, so the "
        "join starts over with empty state, reading predictions and labels from their start",
        lost,
    )
    return True
