"""``streamtrain train`` with dynamic embedding tables on the ``ctr`` click stream, on the real
broker: it learns (held-out log loss drops), tables fill, evict and export their metrics, and
``kill -9`` three times ends bit-identical to an uninterrupted run: weights, Adagrad rows, the
mapping, the admission filter's counters and the eviction state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer
from safetensors.numpy import load_file

from streamtrain.datasets_ctr import ctr, ctr_spec
from streamtrain.kafka import create_topics
from streamtrain.sparse_tensors import JaggedTensor
from streamtrain.train.models import build_model
from streamtrain.train.models.dynamic_table import EMPTY
from tests.integration.trainer_harness import (
    assert_same_state,
    checkpoint_meta,
    checkpoint_state,
    kill_repeatedly,
    latest_checkpoint,
    run_to_end,
    trainer_env,
)

SPEC = ctr_spec()
PARAMS = {
    "embedding_dim": 8,
    "bottom_sizes": [16],
    "top_sizes": [16],
    "tables": {
        # fewer rows than distinct IDs: the tables fill, then evict
        "users": {"kind": "dynamic", "capacity": 300, "admit_after": 2, "evict": "lfu"},
        "items": {"kind": "dynamic", "capacity": 300, "evict": "lru", "expire_after_steps": 60},
    },
}
ENV = {
    "STREAMTRAIN_MODEL__NAME": "dlrm",
    "STREAMTRAIN_MODEL__TASK": "binary",
    "STREAMTRAIN_MODEL__INPUT_SHAPE": "[4]",
    "STREAMTRAIN_MODEL__SPARSE": json.dumps(
        [
            {"name": "user", "table": "users", "max_length": 1},
            {"name": "item", "table": "items", "max_length": 1},
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
TRAIN, HELD_OUT = 5000, 1500


def ctr_samples() -> list[dict[str, object]]:
    """The ctr stream (streamtrain.datasets_ctr) as wire records: the first TRAIN go to Kafka,
    the rest are held out (same ground truth, later samples)."""
    info = ctr(users=3000, items=800, new_item_every=20)
    chunk = next(info.iterate(TRAIN + HELD_OUT, seed=1, chunk_size=TRAIN + HELD_OUT))
    assert chunk.sparse is not None
    users, items = chunk.sparse.features["user"].ids, chunk.sparse.features["item"].ids
    return [
        {
            "features": chunk.features[i].round(4).tolist(),
            "sparse": {"user": [int(users[i])], "item": [int(items[i])]},
            "label": int(chunk.labels[i]),
        }
        for i in range(len(users))
    ]


def produce(bootstrap: str, topic: str, samples: list[dict[str, object]]) -> None:
    create_topics(bootstrap, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, sample in enumerate(samples):
        producer.send(topic, json.dumps(sample).encode(), partition=i % 2)
    producer.flush()
    producer.close()


def log_loss(weights: dict[str, np.ndarray], samples: list[dict[str, object]]) -> float:
    model = build_model("dlrm", SPEC, PARAMS)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    model.eval()
    x = torch.tensor([s["features"] for s in samples], dtype=torch.float32)
    sparse = {
        name: JaggedTensor.from_lists([s["sparse"][name] for s in samples])  # type: ignore[index]
        for name in ("user", "item")
    }
    y = torch.tensor([s["label"] for s in samples], dtype=torch.float32)
    with torch.no_grad():
        logits = model(x, sparse)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))


def test_dynamic_tables_learn_and_recover_bit_identical_after_kill_minus_9(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    samples = ctr_samples()
    produce(kafka_bootstrap, f"{unique_name}-samples", samples[:TRAIN])
    held_out = samples[TRAIN:]

    reference = tmp_path / "reference"
    env = {**ENV, "STREAMTRAIN_INGEST__GROUP_ID": f"{unique_name}-ref"}
    env["STREAMTRAIN_TOPICS__SNAPSHOTS"] = f"{unique_name}-snapshots-ref"
    output = run_to_end(trainer_env(kafka_bootstrap, unique_name, reference, env))
    expected = checkpoint_state(reference)
    position = expected["position"]
    assert isinstance(position, dict) and position["samples_seen"] == TRAIN, output

    trained = load_file(str(latest_checkpoint(reference) / "model.safetensors"))
    users = trained["embeddings.mappings.t_users.slot_ids"]
    items = trained["embeddings.mappings.t_items.slot_ids"]
    assert (users != EMPTY).sum() == 300, "the user table filled up"
    assert 0 < (items != EMPTY).sum() <= 300
    assert trained["embeddings.mappings.t_users.filter_counts"].any(), "filter counts are state"
    distinct = {s["sparse"]["user"][0] for s in samples[:TRAIN]}  # type: ignore[index]
    assert len(distinct) > 300, "more users than rows: the table must have evicted"
    torch.manual_seed(0)
    untrained = {
        k: v.detach().numpy() for k, v in build_model("dlrm", SPEC, PARAMS).state_dict().items()
    }
    before, after = log_loss(untrained, held_out), log_loss(trained, held_out)
    assert after < 0.9 * before, f"held-out log loss {before:.3f} -> {after:.3f}"

    crash_dir = tmp_path / "crashing"
    crashing = trainer_env(kafka_bootstrap, unique_name, crash_dir, ENV)
    total_steps = checkpoint_meta(reference)["step"]
    assert isinstance(total_steps, int)
    kill_repeatedly(crashing, crash_dir, total_steps, 3, random.Random(11))
    run_to_end(crashing)
    assert_same_state(expected, checkpoint_state(crash_dir))
