"""The trainer's dynamic embedding table metrics (``train/table_upkeep.py``), per table."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from streamtrain.metrics.registries import TRAINER_REGISTRY

TABLE_OCCUPANCY = Gauge(
    "streamtrain_table_occupancy_ratio",
    "Share of a dynamic table's capacity owned by admitted IDs.",
    ["table"],
    registry=TRAINER_REGISTRY,
)
TABLE_ADMISSIONS = Counter(
    "streamtrain_table_admissions",
    "IDs given their own row of a dynamic table.",
    ["table"],
    registry=TRAINER_REGISTRY,
)
TABLE_REFUSALS = Counter(
    "streamtrain_table_refusals",
    "Steps' new IDs left on the fallback rows, by reason (filter, probability, full).",
    ["table", "reason"],
    registry=TRAINER_REGISTRY,
)
TABLE_EVICTIONS = Counter(
    "streamtrain_table_evictions",
    "Rows taken from their ID, by cause (lru, lfu: the table was full; expired).",
    ["table", "cause"],
    registry=TRAINER_REGISTRY,
)
