"""What every process exports about itself: build and model info, process/python collectors,
and the CUDA-only gauges registered on demand."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from prometheus_client import GCCollector, Info, PlatformCollector, ProcessCollector

from streamtrain.metrics.registries import JOIN_REGISTRY, SERVER_REGISTRY, TRAINER_REGISTRY
from streamtrain.metrics.trainer import CUDA_ONLY


# --- both processes: what is running -------------------------------------------------------
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"


BUILD_LABELS = {
    "version": _version("streamtrain"),
    "python": platform.python_version(),
    "torch": _version("torch"),
    "confluent_kafka": _version("confluent-kafka"),
    "kafka_python": _version("kafka-python"),
}
TRAIN_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=TRAINER_REGISTRY
)
SERVE_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=SERVER_REGISTRY
)
TRAIN_MODEL_INFO = Info(
    "streamtrain_model", "The model this process trains or serves.", registry=TRAINER_REGISTRY
)
SERVE_MODEL_INFO = Info(
    "streamtrain_model", "The model this process trains or serves.", registry=SERVER_REGISTRY
)
JOIN_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=JOIN_REGISTRY
)
for _info in (TRAIN_BUILD_INFO, SERVE_BUILD_INFO, JOIN_BUILD_INFO):
    _info.info(BUILD_LABELS)
# Operators expect process_* (CPU, memory, open files) and python_* next to the app's metrics;
# custom registries get none of them unless asked.
for _registry in (TRAINER_REGISTRY, SERVER_REGISTRY, JOIN_REGISTRY):
    ProcessCollector(registry=_registry)
    PlatformCollector(registry=_registry)
    GCCollector(registry=_registry)


def export_cuda_metrics() -> None:
    """Add the CUDA-only metrics to the trainer's registry (once; call when training on CUDA)."""
    for metric in CUDA_ONLY:
        with contextlib.suppress(ValueError):  # already registered
            TRAINER_REGISTRY.register(metric)


def model_info_labels(model: Mapping[str, Any], settings_hash: str) -> dict[str, str]:
    """``streamtrain_model_info`` labels from the model settings (``model.*`` as JSON)."""
    shape = "x".join(str(d) for d in model.get("input_shape") or ())
    return {
        "name": str(model.get("name")),
        "task": str(model.get("task")),
        "input_shape": shape,
        "num_classes": str(model.get("num_classes")),
        "settings_hash": settings_hash[:16],
    }
