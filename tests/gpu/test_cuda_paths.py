"""CUDA paths: pinned host batches, side-stream snapshot copies, autocast steps, GPU serving.

Collected everywhere, run only where CUDA is present (conftest skips the folder otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtrain.ingest.device import to_device
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.inference import BatchingEngine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.testing import ToyStream
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead
from streamtrain.train.weights import copy_weights

CUDA = torch.device("cuda")
SPEC = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=4)


def test_batch_reaches_the_gpu_with_its_values() -> None:
    batch = Batch(
        features=np.arange(6, dtype=np.float32).reshape(2, 3),
        labels=np.array([1, 3], np.int64),
        weights=np.ones(2, np.float32),
        timestamps=np.zeros(2),
        next_offsets={0: 2},
        records=2,
    )
    out = to_device(batch, CUDA)
    torch.cuda.synchronize()
    assert out.features.is_cuda and out.labels.is_cuda
    assert out.features.cpu().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out.labels.cpu().tolist() == [1, 3]


def test_snapshot_copy_is_pinned_and_equals_the_weights_at_copy_time() -> None:
    # ~17 MB of weights: the side stream's copy takes long enough that in-place updates
    # queued right after it would overlap it unless the current stream waits for the copy.
    model = build_model("mlp", SPEC, {"hidden_sizes": [2048, 2048]}).to(CUDA)
    before = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    copies, wait_ready = copy_weights(model)
    with torch.no_grad():  # training goes on while the copy is in flight
        for param in model.parameters():
            param.add_(1.0)
    wait_ready()
    assert all(t.is_pinned() for t in copies.values())
    for name, tensor in copies.items():
        assert torch.equal(tensor, before[name]), f"{name} saw a later update"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_steps_learn_and_stay_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [64]}).to(CUDA)
    learner = Learner(
        model,
        TaskHead(SPEC),
        build_optimizer(model.parameters(), "adam", lr=1e-2),
        autocast_dtype=dtype,
        device=CUDA,
    )
    stream = ToyStream(SPEC, seed=1)
    scores = []
    for _ in range(200):
        x, y, w = (t.to(CUDA) for t in stream.batch(64))
        outcome = learner.learn(x, y, w)
        scores.append(float(outcome.score_sum) / outcome.samples)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.mean(scores[-20:]) > np.mean(scores[:20]) + 0.2


def test_gpu_serving_matches_the_cpu_forward() -> None:
    model = build_model("mlp", SPEC, {"hidden_sizes": [32]})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    slot = WeightSlot(build_model("mlp", SPEC, {"hidden_sizes": [32]}).to(CUDA))
    slot.load(state, SnapshotHeader(7, "gpu"))
    engine = BatchingEngine(slot, head_for(SPEC), CUDA, max_batch_size=16, max_wait_s=0.002)
    try:
        rows = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
        futures = [engine.submit(rows[i : i + 1]) for i in range(5)]
        served = np.concatenate([f.result(10).outputs["probabilities"] for f in futures])
        assert {f.result().info.version for f in futures} == {7}
    finally:
        engine.close()
    with torch.inference_mode():
        expected = TaskHead(SPEC).predict(model.eval()(torch.from_numpy(rows)))["probabilities"]
    assert np.allclose(served, expected.numpy(), atol=1e-5)
