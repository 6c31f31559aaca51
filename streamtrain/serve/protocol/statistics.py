"""Triton's inference statistics extension: counts and cumulative times per model version.

Both front ends record into one :class:`InferenceStatistics`, so REST's ``/v2/models/m/stats``
and gRPC's ``ModelStatistics`` report the same numbers. A request's time is split as Triton
splits it: ``compute_input`` (from the request's start: receiving, parsing and checking the
input; one rule for REST and gRPC, see ``dataplane.Timing``), ``compute_infer`` (the engine
call, which with the batching engine includes the wait for a shared pass, so ``queue`` stays
zero), ``compute_output`` (encoding the reply); ``success`` is the whole request. Failures are
counted against the version they addressed (or the live one). ``execution_count`` counts
engine calls; with the batching engine several calls may share one forward pass.

Memory is bounded: only the ``keep`` most recently used versions are held.

>>> stats = InferenceStatistics(keep=2)
>>> stats.success(3, rows=2, input_ns=10, infer_ns=100, output_ns=5, total_ns=120)
>>> doc = stats.to_json("m", None, loaded=[3])[0]
>>> doc["version"], doc["inference_count"], doc["inference_stats"]["compute_infer"]
('3', 2, {'count': 1, 'ns': 100})
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

_PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass
class _VersionStats:
    durations: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in _PHASES})
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def add(self, phase: str, ns: int) -> None:
        entry = self.durations[phase]
        entry[0] += 1
        entry[1] += ns


class InferenceStatistics:
    """Thread-safe per-version counters (REST runs on uvicorn's loop, gRPC on its own thread)."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._versions: OrderedDict[int, _VersionStats] = OrderedDict()

    def _entry(self, version: int) -> _VersionStats:
        entry = self._versions.get(version)
        if entry is None:
            entry = self._versions[version] = _VersionStats()
            while len(self._versions) > self._keep:
                self._versions.popitem(last=False)
        else:
            self._versions.move_to_end(version)
        return entry

    def success(
        self,
        version: int,
        *,
        rows: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        total_ns: int,
    ) -> None:
        with self._lock:
            entry = self._entry(version)
            # Once per request: the four phases added here, not through ``add``.
            durations = entry.durations
            for name, ns in (
                ("success", total_ns),
                ("compute_input", input_ns),
                ("compute_infer", infer_ns),
                ("compute_output", output_ns),
            ):
                phase = durations[name]
                phase[0] += 1
                phase[1] += ns
            entry.inference_count += rows
            entry.execution_count += 1
            entry.last_inference_ms = int(time.time() * 1000)

    def failure(self, version: int, total_ns: int) -> None:
        with self._lock:
            self._entry(version).add("fail", total_ns)

    def to_json(self, name: str, version: int | None, loaded: list[int]) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` list for the ``loaded`` versions (zeros for one not used
        yet), or just ``version`` when given."""
        empty = _VersionStats()
        with self._lock:
            return [
                _version_json(name, v, self._versions.get(v, empty))
                for v in loaded
                if version is None or v == version
            ]


def _version_json(name: str, version: int, stats: _VersionStats) -> dict[str, Any]:
    return {
        "name": name,
        "version": str(version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {p: {"count": c, "ns": ns} for p, (c, ns) in stats.durations.items()},
        "batch_stats": [],
    }
