"""``streamtrain train --nproc 2`` with dynamic tables on the ``ctr`` stream, on the real broker:
both ranks make the same admission and eviction decisions (their /metrics table series are
equal once the stream is learned, with tables that filled and evicted), rank 0's checkpoint
holds a valid mapping that matches them, and the model learns. (Decision-by-decision equality
with one process on the union batches: tests/unit/test_dynamic_tables_ranks.py.)"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from streamtrain.train.models.dynamic_table import EMPTY
from tests.integration.test_dynamic_tables_trainer import ENV, HELD_OUT, PARAMS, SPEC, ctr_samples
from tests.integration.trainer_harness import (
    dlrm_log_loss,
    latest_checkpoint,
    produce_sparse_json,
    scrape,
    start_trainer,
    trainer_env,
    untrained_dlrm,
)

TRAIN = 3000
_RANK = re.compile(r',?rank="(\d+)"')


def _two_free_ports() -> int:
    """A port p with p and p + 1 free (rank r serves /metrics on base + r)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two consecutive free ports")


def _table_series(url: str) -> dict[str, float]:
    """This rank's dynamic table samples, the rank label removed (and the series' creation
    times, which are each process's own)."""
    return {
        _RANK.sub("", name).replace("{,", "{"): value
        for name, value in scrape(url).items()
        if name.startswith("streamtrain_table_") and "_created{" not in name
    }


def _learned(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        total += sum(
            v for k, v in scrape(url).items() if k.startswith("streamtrain_train_samples_total")
        )
    return total


def test_two_ranks_make_the_same_table_decisions_and_learn(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    samples = ctr_samples()
    produce_sparse_json(kafka_bootstrap, f"{unique_name}-samples", samples[:TRAIN])
    port = _two_free_ports()
    env = {
        **ENV,
        "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
        "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "30.0",
        "STREAMTRAIN_TRAIN__METRICS_PORT": str(port),
    }
    job = start_trainer(
        trainer_env(kafka_bootstrap, unique_name, tmp_path / "ckpt", env), "--nproc", "2"
    )
    urls = [f"http://127.0.0.1:{port + r}/metrics" for r in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        learned = 0.0
        while time.monotonic() < deadline and job.poll() is None:
            try:
                learned = _learned(urls)
            except OSError:  # a rank not serving yet
                learned = 0.0
            if learned >= TRAIN:
                break
            time.sleep(0.5)
        assert learned == TRAIN, f"learned {learned} of {TRAIN} samples before the deadline"
        ranks = [_table_series(url) for url in urls]
        output, _ = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, output
    assert ranks[0] == ranks[1], f"rank 0 {ranks[0]}\nrank 1 {ranks[1]}"
    series = ranks[0]
    assert series['streamtrain_table_admissions_total{table="users"}'] > 300
    assert series['streamtrain_table_evictions_total{cause="lfu",table="users"}'] > 0

    trained = load_file(str(latest_checkpoint(tmp_path / "ckpt") / "model.safetensors"))
    for table in ("users", "items"):
        owners = trained[f"embeddings.mappings.t_{table}.slot_ids"]
        owned = owners[owners != EMPTY]
        assert np.unique(owned).size == owned.size, f"{table}: an ID owns two rows"
        occupancy = series[f'streamtrain_table_occupancy_ratio{{table="{table}"}}']
        assert owned.size == round(occupancy * 300), table
    held_out = samples[-HELD_OUT:]
    before = dlrm_log_loss(SPEC, PARAMS, untrained_dlrm(SPEC, PARAMS), held_out)
    after = dlrm_log_loss(SPEC, PARAMS, trained, held_out)
    assert after < 0.9 * before, f"held-out log loss {before:.3f} -> {after:.3f}"
