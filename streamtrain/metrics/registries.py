"""The three registries (one per process kind) and the histogram buckets metrics share."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

TRAINER_REGISTRY = CollectorRegistry(auto_describe=True)
SERVER_REGISTRY = CollectorRegistry(auto_describe=True)
JOIN_REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 100 µs to a minute: a small MLP steps in well under a millisecond, while a
# CNN or transformer step on a large CPU batch, or a large inference request, takes seconds; the
# top buckets keep those out of +Inf (docs/metrics.md has the measured figures).
_FAST = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
