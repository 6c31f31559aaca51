"""The serving benchmarks' model, shared by bench/serve.py, bench/litserve_peer.py and
bench/gpu_serve.py so every server runs the same network; importing it needs no LitServe."""

from __future__ import annotations

from typing import Any

API_PATH = "/v2/models/bench/infer"


def model_overrides(hidden: int) -> dict[str, Any]:
    """MLP 32 -> hidden -> hidden -> 10 classes, as ``model`` settings."""
    return {
        "name": "mlp",
        "task": "multiclass",
        "input_shape": [32],
        "num_classes": 10,
        "params": {"hidden_sizes": [hidden, hidden]},
    }
