"""A sparse-feature model trained through ``streamtrain train`` on the real broker: it learns
from the IDs, and kill -9 recovery is bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer
from safetensors.numpy import load_file

from streamtrain.kafka import create_topics
from streamtrain.sparse_tensors import JaggedTensor
from streamtrain.spec import SampleSpec, SparseFeature
from streamtrain.train.models import build_model
from tests.integration.trainer_harness import (
    assert_same_state,
    checkpoint_meta,
    checkpoint_state,
    kill_repeatedly,
    latest_checkpoint,
    run_to_end,
    trainer_env,
)

SPEC = SampleSpec(
    (4,),
    "binary",
    sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 5)),
)
PARAMS = {"rows": 512, "embedding_dim": 8, "bottom_sizes": [16], "top_sizes": [16]}
SPARSE_ENV = {
    "STREAMTRAIN_MODEL__NAME": "dlrm",
    "STREAMTRAIN_MODEL__TASK": "binary",
    "STREAMTRAIN_MODEL__INPUT_SHAPE": "[4]",
    "STREAMTRAIN_MODEL__SPARSE": json.dumps(
        [
            {"name": "user", "table": "users", "max_length": 1},
            {"name": "items", "table": "items", "max_length": 5},
        ]
    ),
    "STREAMTRAIN_MODEL__PARAMS": json.dumps(PARAMS),
    "STREAMTRAIN_OPTIMIZER__NAME": "adagrad",
    "STREAMTRAIN_OPTIMIZER__LR": "0.05",
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "7",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "3.0",
    "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
}


def click_stream(count: int, seed: int) -> list[dict[str, object]]:
    """Users and items with hidden biases; a click is likely when they add up (IDs carry most
    of the signal, the dense features a little)."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(0)
    user_bias, item_bias = truth.normal(size=60) * 2, truth.normal(size=200)
    samples = []
    for _ in range(count):
        user = int(rng.integers(60))
        items = rng.integers(200, size=int(rng.integers(1, 6)))
        dense = rng.normal(size=4)
        logit = user_bias[user] + item_bias[items].mean() * 2 + 0.5 * dense[0]
        label = int(rng.random() < 1 / (1 + np.exp(-3 * logit)))
        samples.append(
            {
                "features": dense.round(4).tolist(),
                "sparse": {"user": [user + 10_000], "items": (items * 7919).tolist()},
                "label": label,
            }
        )
    return samples


def _produce(bootstrap: str, topic: str, samples: list[dict[str, object]]) -> None:
    create_topics(bootstrap, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, sample in enumerate(samples):
        producer.send(topic, json.dumps(sample).encode(), partition=i % 2)
        if i % 101 == 0:  # a malformed sparse field among them is dead-lettered, not learned
            producer.send(topic, b'{"features":[0,0,0,0],"label":1,"sparse":{"x":[1]}}')
    producer.flush()
    producer.close()


def _log_loss(weights: dict[str, np.ndarray], samples: list[dict[str, object]]) -> float:
    model = build_model("dlrm", SPEC, PARAMS)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    model.eval()
    x = torch.tensor([s["features"] for s in samples], dtype=torch.float32)
    sparse = {
        name: JaggedTensor.from_lists([s["sparse"][name] for s in samples])  # type: ignore[index]
        for name in ("user", "items")
    }
    y = torch.tensor([s["label"] for s in samples], dtype=torch.float32)
    with torch.no_grad():
        logits = model(x, sparse)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))


def test_sparse_model_learns_and_recovers_bit_identical_after_kill_minus_9(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, f"{unique_name}-samples", click_stream(4000, seed=1))
    held_out = click_stream(1000, seed=2)

    reference = tmp_path / "reference"
    env = {**SPARSE_ENV, "STREAMTRAIN_INGEST__GROUP_ID": f"{unique_name}-ref"}
    env["STREAMTRAIN_TOPICS__SNAPSHOTS"] = f"{unique_name}-snapshots-ref"
    output = run_to_end(trainer_env(kafka_bootstrap, unique_name, reference, env))
    expected = checkpoint_state(reference)
    position = expected["position"]
    assert isinstance(position, dict) and position["samples_seen"] == 4000, output

    trained = load_file(str(latest_checkpoint(reference) / "model.safetensors"))
    torch.manual_seed(0)
    untrained = {
        k: v.detach().numpy() for k, v in build_model("dlrm", SPEC, PARAMS).state_dict().items()
    }
    before, after = _log_loss(untrained, held_out), _log_loss(trained, held_out)
    assert after < 0.8 * before, f"held-out log loss {before:.3f} -> {after:.3f}"
    assert any("optimizer/" in k for k in expected), "the Adagrad row state is checkpointed"

    crash_dir = tmp_path / "crashing"
    crashing = trainer_env(kafka_bootstrap, unique_name, crash_dir, SPARSE_ENV)
    total_steps = checkpoint_meta(reference)["step"]
    assert isinstance(total_steps, int)
    kill_repeatedly(crashing, crash_dir, total_steps, 3, random.Random(11))
    run_to_end(crashing)
    assert_same_state(expected, checkpoint_state(crash_dir))
