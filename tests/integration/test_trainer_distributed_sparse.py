"""Two trainer ranks (torchrun, gloo, CPU) train an embedding-table model on the real broker:
every sample is learned once, the model learns from the IDs, and rank 0's checkpoint holds the
Adagrad row state. (Step-by-step equality with one process: tests/unit/test_distributed_step.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from safetensors.numpy import load_file

from streamtrain.train.models import build_model
from tests.integration.test_trainer_sparse import PARAMS, SPARSE_ENV, SPEC, click_stream
from tests.integration.trainer_harness import (
    STOP_WHEN_IDLE_S,
    checkpoint_meta,
    dlrm_log_loss,
    latest_checkpoint,
    produce_sparse_json,
    start_trainer,
    trainer_env,
)

SAMPLES = 2000


def test_two_ranks_train_an_embedding_model_on_every_sample_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    produce_sparse_json(
        kafka_bootstrap, f"{unique_name}-samples", click_stream(SAMPLES, seed=1), junk_every=101
    )
    env = {
        **SPARSE_ENV,
        "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
        "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
    }
    job = start_trainer(
        trainer_env(kafka_bootstrap, unique_name, tmp_path / "ckpt", env), "--nproc", "2"
    )
    try:
        output, _ = job.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        job.kill()
        output, _ = job.communicate()
        raise AssertionError(f"trainer did not stop within 300 s:\n{output}") from None
    assert job.returncode == 0, output
    assert "Traceback" not in output, output
    meta = checkpoint_meta(tmp_path / "ckpt")
    assert meta["samples_seen"] == SAMPLES, output  # the malformed records are not learned
    assert meta["extra"] == {"world_size": 2}
    stopped = [line for line in output.splitlines() if line.startswith("stopped (idle)")]
    assert len(stopped) == 2, output

    checkpoint = latest_checkpoint(tmp_path / "ckpt")
    trained = load_file(str(checkpoint / "model.safetensors"))
    torch.manual_seed(0)
    untrained = {
        k: v.detach().numpy() for k, v in build_model("dlrm", SPEC, PARAMS).state_dict().items()
    }
    held_out = click_stream(1000, seed=2)
    before, after = (
        dlrm_log_loss(SPEC, PARAMS, untrained, held_out),
        dlrm_log_loss(SPEC, PARAMS, trained, held_out),
    )
    assert after < 0.8 * before, f"held-out log loss {before:.3f} -> {after:.3f}"
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    assert any(name.endswith("sum") for name in optimizer), sorted(optimizer)[:5]
