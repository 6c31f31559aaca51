"""What a real scrape of each process holds beyond streamtrain's own series: the standard
process collectors, build and model info, and no CUDA gauge on a CPU trainer."""

from __future__ import annotations

import importlib.metadata as metadata
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import streamtrain.metrics as metrics
from streamtrain.cli.common import describe_model
from streamtrain.config import load_settings
from streamtrain.metrics import SERVER_REGISTRY, TRAINER_REGISTRY, serve_metrics

REGISTRIES = {"trainer": TRAINER_REGISTRY, "server": SERVER_REGISTRY}


def _scrape(registry: CollectorRegistry) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from the real /metrics endpoint."""
    server = serve_metrics(registry, 0, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


@pytest.mark.parametrize("process", sorted(REGISTRIES))
def test_process_collectors_and_build_info_are_scraped(process: str) -> None:
    samples = _scrape(REGISTRIES[process])
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert name in samples, f"{process} /metrics lacks {name}"
    (build,) = samples["streamtrain_build_info"]
    assert build["torch"] == metadata.version("torch")
    assert build["version"] == metadata.version("streamtrain")
    assert build["confluent_kafka"] == metadata.version("confluent-kafka")


def test_model_info_names_the_configured_model() -> None:
    settings = load_settings(overrides={"model": {"name": "mlp", "input_shape": [16]}})
    describe_model(metrics.SERVE_MODEL_INFO, settings)
    (model,) = _scrape(SERVER_REGISTRY)["streamtrain_model_info"]
    assert model["name"] == "mlp" and model["input_shape"] == "16"
    assert len(model["settings_hash"]) == 16


def test_cuda_memory_is_exported_only_once_a_cuda_trainer_asks() -> None:
    name = "streamtrain_train_cuda_memory_allocated_bytes"
    assert name not in _scrape(TRAINER_REGISTRY), "a CPU trainer must not export a CUDA gauge"
    metrics.export_cuda_metrics()
    metrics.export_cuda_metrics()  # idempotent
    try:
        assert name in _scrape(TRAINER_REGISTRY)
    finally:
        TRAINER_REGISTRY.unregister(metrics.TRAIN_CUDA_MEMORY)
