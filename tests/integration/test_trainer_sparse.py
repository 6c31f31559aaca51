"""A sparse-feature model trained through ``streamtrain train`` on the real broker: it learns
from the IDs, and kill -9 recovery is bit-identical to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from streamtrain.sample.spec import SampleSpec, SparseFeature
from tests.integration.trainer_harness import (
    assert_recovers_from_kill_9,
    dlrm_env,
    dlrm_log_loss,
    latest_checkpoint,
    produce_sparse_json,
    reference_run,
    untrained_dlrm,
)

SPEC = SampleSpec(
    (4,),
    "binary",
    sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 5)),
)
PARAMS = {"rows": 512, "embedding_dim": 8, "bottom_sizes": [16], "top_sizes": [16]}
SPARSE_ENV = dlrm_env(
    [
        {"name": "user", "table": "users", "max_length": 1},
        {"name": "items", "table": "items", "max_length": 5},
    ],
    PARAMS,
)


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


def test_sparse_model_learns_and_recovers_bit_identical_after_kill_minus_9(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    # a malformed sparse field every 101 samples is dead-lettered, not learned
    samples = click_stream(4000, seed=1)
    produce_sparse_json(kafka_bootstrap, f"{unique_name}-samples", samples, junk_every=101)
    held_out = click_stream(1000, seed=2)

    reference = tmp_path / "reference"
    expected = reference_run(kafka_bootstrap, unique_name, reference, SPARSE_ENV, 4000)

    trained = load_file(str(latest_checkpoint(reference) / "model.safetensors"))
    untrained = untrained_dlrm(SPEC, PARAMS)
    before = dlrm_log_loss(SPEC, PARAMS, untrained, held_out)
    after = dlrm_log_loss(SPEC, PARAMS, trained, held_out)
    assert after < 0.8 * before, f"held-out log loss {before:.3f} -> {after:.3f}"
    assert any("optimizer/" in k for k in expected), "the Adagrad row state is checkpointed"

    crash_dir = tmp_path / "crashing"
    assert_recovers_from_kill_9(
        kafka_bootstrap, unique_name, crash_dir, SPARSE_ENV, reference, expected
    )
