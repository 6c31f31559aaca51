"""``streamtrain train`` with dynamic embedding tables on the ``ctr`` click stream, on the real
broker: it learns (held-out log loss drops), tables fill, evict and export their metrics, and
``kill -9`` three times ends bit-identical to an uninterrupted run: weights, Adagrad rows, the
mapping, the admission filter's counters and the eviction state."""

from __future__ import annotations

from pathlib import Path

from safetensors.numpy import load_file

from streamtrain.datasets.ctr import ctr, ctr_spec
from streamtrain.train.models.dynamic_table import EMPTY
from tests.integration.trainer_harness import (
    assert_recovers_from_kill_9,
    dlrm_env,
    dlrm_log_loss,
    latest_checkpoint,
    produce_sparse_json,
    reference_run,
    untrained_dlrm,
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
ENV = dlrm_env(
    [
        {"name": "user", "table": "users", "max_length": 1},
        {"name": "item", "table": "items", "max_length": 1},
    ],
    PARAMS,
)
TRAIN, HELD_OUT = 5000, 1500


def ctr_samples() -> list[dict[str, object]]:
    """The ctr stream (streamtrain.datasets.ctr) as wire records: the first TRAIN go to Kafka,
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


def test_dynamic_tables_learn_and_recover_bit_identical_after_kill_minus_9(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    samples = ctr_samples()
    produce_sparse_json(kafka_bootstrap, f"{unique_name}-samples", samples[:TRAIN])
    held_out = samples[TRAIN:]

    reference = tmp_path / "reference"
    expected = reference_run(kafka_bootstrap, unique_name, reference, ENV, TRAIN)

    trained = load_file(str(latest_checkpoint(reference) / "model.safetensors"))
    users = trained["embeddings.mappings.t_users.slot_ids"]
    items = trained["embeddings.mappings.t_items.slot_ids"]
    assert (users != EMPTY).sum() == 300, "the user table filled up"
    assert 0 < (items != EMPTY).sum() <= 300
    assert trained["embeddings.mappings.t_users.filter_counts"].any(), "filter counts are state"
    distinct = {s["sparse"]["user"][0] for s in samples[:TRAIN]}  # type: ignore[index]
    assert len(distinct) > 300, "more users than rows: the table must have evicted"
    untrained = untrained_dlrm(SPEC, PARAMS)
    before = dlrm_log_loss(SPEC, PARAMS, untrained, held_out)
    after = dlrm_log_loss(SPEC, PARAMS, trained, held_out)
    assert after < 0.9 * before, f"held-out log loss {before:.3f} -> {after:.3f}"

    crash_dir = tmp_path / "crashing"
    assert_recovers_from_kill_9(kafka_bootstrap, unique_name, crash_dir, ENV, reference, expected)
