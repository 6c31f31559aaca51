"""The trainer, sparse tables and the direct serving engine on CUDA.

Collected everywhere, run only where CUDA is present (conftest skips the folder otherwise).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from streamtrain.builders.trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.config import load_settings
from streamtrain.datasets.ctr import ctr
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.sparse_torch import to_tensors
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.inference import DirectEngine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.testing import ToyStream
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

CUDA = torch.device("cuda")
SPEC = SampleSpec(feature_shape=(16,), task="binary")


@pytest.mark.parametrize("autocast", ["off", "bf16", "fp16"])
def test_trainer_on_cuda_learns_from_the_broker_and_checkpoints(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path, autocast: str
) -> None:
    """broker -> ingest -> device copy -> (autocast) step -> snapshot and checkpoint on CUDA."""
    topic = f"{unique_name}-samples"
    create_topics(kafka_connection.bootstrap_servers, [topic, f"{unique_name}-snap"])
    x, y, _ = ToyStream(SPEC, seed=3).batch(4096)
    with SampleProducer(spec=SPEC, topic=topic, format="binary", kafka=kafka_connection) as out:
        out.send_many(x.numpy(), y.numpy(), partition=0)
        out.flush()
    settings = load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_connection.bootstrap_servers},
            "topics": {
                "samples": topic,
                "dead_letter": f"{unique_name}-dlq",
                "snapshots": f"{unique_name}-snap",
            },
            "ingest": {"group_id": unique_name, "start_from": "earliest", "max_batch_size": 128},
            "model": {"name": "mlp", "task": "binary", "input_shape": [16]},
            "optimizer": {"name": "adam", "lr": 0.01, "step_samples": "batch"},
            "train": {
                "device": "cuda",
                "autocast": autocast,
                "checkpoint_dir": str(tmp_path),
                "max_samples": 4096,
                "metric_window": 1000,
            },
        }
    )
    summary = build_trainer(settings).run()
    assert summary.samples_seen == 4096
    assert summary.rolling_score > 0.85, f"prequential accuracy {summary.rolling_score:.3f}"
    done = sorted(p for p in tmp_path.iterdir() if (p / "meta.json").is_file())
    assert done, f"no checkpoint written under {tmp_path}"
    weights = load_file(str(done[-1] / "model.safetensors"))
    assert weights and all(np.isfinite(w).all() for w in weights.values())


def test_fp16_loss_scale_backs_off_on_overflow_and_the_model_keeps_learning() -> None:
    """A loss scale far too high for fp16 (2**40, set on the learner's scaler) overflows the
    first steps' gradients: those steps are skipped while the scale halves, then steps apply
    and the model learns, its weights finite throughout."""
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [64]}).to(CUDA)
    learner = Learner(
        model,
        TaskHead(SPEC),
        build_optimizer(model.parameters(), "adam", lr=1e-2),
        autocast_dtype=torch.float16,
        device=CUDA,
    )
    assert learner._scaler is not None, "fp16 autocast must come with a loss scaler"
    learner._scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    stream = ToyStream(SPEC, seed=1)
    applied, scores = [], []
    for _ in range(300):
        x, y, w = (t.to(CUDA) for t in stream.batch(64))
        outcome = learner.learn(x, y, w)
        applied.append(outcome.applied)
        scores.append(float(outcome.score_sum) / outcome.samples)
    assert not applied[0], "a step at scale 2**40 should overflow fp16 gradients"
    assert learner._scaler.get_scale() < 2.0**30
    assert all(applied[-100:]), "the scale never came down far enough for steps to apply"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.mean(scores[-50:]) > np.mean(scores[:50]) + 0.2


def test_dlrm_sparse_step_keeps_its_tables_on_the_gpu_and_moves_only_batch_rows() -> None:
    info = ctr(users=5000, items=2000)
    params = {"rows": 4096, "embedding_dim": 8, "bottom_sizes": [16], "top_sizes": [16]}
    torch.manual_seed(0)
    model = build_model("dlrm", info.spec, params).to(CUDA)
    learner = Learner(
        model,
        TaskHead(info.spec),
        build_optimizer(model.parameters(), "adagrad", lr=0.05),
        device=CUDA,
    )
    tables = {n: p for n, p in model.named_parameters() if p.dim() == 2 and p.shape[0] == 4096}
    assert len(tables) == 2 and all(p.device.type == "cuda" for p in tables.values())
    chunks = list(info.iterate(256 * 40, seed=0, chunk_size=256))
    losses = []
    for i, chunk in enumerate(chunks):
        assert chunk.sparse is not None
        x = torch.from_numpy(chunk.features).to(CUDA)
        y = torch.from_numpy(np.asarray(chunk.labels)).to(CUDA)
        before = {n: p.detach().clone() for n, p in tables.items()}
        outcome = learner.learn(x, y, torch.ones(len(chunk), device=CUDA), to_tensors(
            chunk.sparse, CUDA
        ))  # fmt: skip
        losses.append(float(outcome.loss))
        if i == 0:
            for name, table in tables.items():
                assert (
                    table.grad is not None
                    and table.grad.is_sparse
                    and table.grad.device.type == "cuda"
                )
                moved = (table.detach() != before[name]).any(dim=1).nonzero().flatten()
                touched = table.grad.coalesce().indices().flatten()
                assert 0 < len(moved) <= 256, name
                assert set(moved.tolist()) <= set(touched.tolist()), f"{name}: untouched rows moved"
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), "the click model did not learn"


def test_direct_engine_on_cuda_times_passes_in_wall_time_and_matches_the_cpu_forward() -> None:
    """On CUDA the inline-or-thread threshold reads wall time (the wait for the device is what
    the event loop would lose), not thread CPU time as on the CPU."""
    model = build_model("mlp", SPEC, {"hidden_sizes": [32]})
    slot = WeightSlot(build_model("mlp", SPEC, {"hidden_sizes": [32]}).to(CUDA))
    slot.load({k: v.clone() for k, v in model.state_dict().items()}, SnapshotHeader(3, "gpu"))
    engine = DirectEngine(slot, head_for(SPEC), CUDA)
    assert engine._timer._clock is time.perf_counter
    rows = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    for _ in range(16):
        served = asyncio.run(engine.infer(rows))
    per_row = engine._timer._seconds_per_row
    assert per_row is not None and per_row > 0
    assert served.info.version == 3
    with torch.inference_mode():
        expected = TaskHead(SPEC).predict(model.eval()(torch.from_numpy(rows)))
    for name, value in expected.items():
        assert np.allclose(served.outputs[name], value.numpy(), atol=1e-5), name
