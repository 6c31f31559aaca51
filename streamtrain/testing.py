"""Test helpers shipped with the package: a learnable toy stream and the model contract suite.

Every built-in passes :func:`check_model`; run it on your own plugin before deploying it::

    from streamtrain.testing import check_model
    check_model("mypkg.models:factory", SampleSpec(feature_shape=(16,), task="binary"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from streamtrain.sample.sparse_torch import JaggedTensor, SparseInput
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer, param_groups
from streamtrain.train.task import TaskHead

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, SparseInput | None]
_TOY_IDS = 16  # distinct IDs per class and sparse feature


class ToyStream:
    """An endless, seeded, learnable stream of samples for ``spec``.

    Classification: each class has a random prototype of the feature shape and a sample is its
    class's prototype plus Gaussian noise (any architecture can separate them). Regression: a
    random linear teacher of the flattened features. With sparse features declared,
    :meth:`sample` also draws 1-3 IDs per feature and sample from a pool of its class (a
    regression target gains a per-ID effect), so embeddings alone can learn the task.

    >>> stream = ToyStream(SampleSpec(feature_shape=(6, 4), task="multiclass", num_classes=3))
    >>> x, y, w = stream.batch(5)
    >>> tuple(x.shape), y.dtype, tuple(w.shape)
    ((5, 6, 4), torch.int64, (5,))
    """

    def __init__(self, spec: SampleSpec, seed: int = 0, noise: float = 0.7) -> None:
        self.spec = spec
        self.noise = noise
        self._gen = torch.Generator().manual_seed(seed)
        if spec.is_classification:
            self._prototypes = torch.randn(
                spec.num_classes, *spec.feature_shape, generator=self._gen
            )
        else:
            teacher = torch.randn(spec.feature_size, spec.target_dim, generator=self._gen)
            self._teacher = teacher / math.sqrt(spec.feature_size)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` samples: float32 features, labels (int64 ``[n]`` or float32 ``[n, D]``), ones."""
        spec = self.spec
        noise = torch.randn(n, *spec.feature_shape, generator=self._gen)
        if spec.is_classification:
            labels = torch.randint(spec.num_classes, (n,), generator=self._gen)
            return self._prototypes[labels] + self.noise * noise, labels, torch.ones(n)
        return noise, noise.flatten(1) @ self._teacher, torch.ones(n)

    def sample(self, n: int) -> Sample:
        """``n`` samples as :meth:`batch` plus their sparse features (None without any)."""
        x, y, w = self.batch(n)
        if not self.spec.sparse:
            return x, y, w, None
        group = y if self.spec.is_classification else (y[:, 0] > 0).long()
        sparse = {}
        for feature in self.spec.sparse:
            rows = []
            for g in group.tolist():
                k = int(torch.randint(1, 4, (1,), generator=self._gen))
                k = min(k, feature.max_length)
                ids = torch.randint(_TOY_IDS, (k,), generator=self._gen) + g * _TOY_IDS
                rows.append(ids.tolist())
            sparse[feature.name] = JaggedTensor.from_lists(rows)
        if not self.spec.is_classification:
            y = y + (2 * group - 1).float().unsqueeze(1)  # the IDs' group moves the target
        return x, y, w, sparse


def check_model(
    name: str,
    spec: SampleSpec,
    params: Mapping[str, Any] | None = None,
    *,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
) -> None:
    """Run the model contract; raise AssertionError saying which clause failed and how.

    1. Building twice under the same seed gives identical weights.
    2. ``forward`` follows the output convention (shape and float32 dtype), for 1 and n samples.
    3. It learns on a toy stream: ``steps`` Adam steps through :class:`Learner` lower the
       held-out loss clearly, and classification accuracy clearly beats chance. A model with
       sparse features (``spec.sparse``; called ``model(x, sparse)``) takes Adagrad steps at
       10x ``lr`` instead: its tables get row-wise sparse gradients, which Adam refuses.
    4. Its state round-trips through safetensors bytes into a freshly built model with
       identical outputs.
    5. Loading the same state again is idempotent: outputs unchanged, parameters and buffers
       keep their storage (a hot swap copies in place).

    The global RNG state and torch's thread count are left as they were; the suite runs
    single-threaded (toy sizes gain nothing from threads, and it keeps the run quick on a
    loaded machine).

    >>> check_model("linear", SampleSpec(feature_shape=(4,), task="binary"))
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            model = _check_deterministic(name, spec, params, seed)
            _check_output_convention(name, model, spec)
            stream = ToyStream(spec, seed=seed + 1)
            _check_learns(name, model, spec, stream, steps, batch_size, lr)
            probe = stream.sample(64)
            _check_round_trip(name, spec, params, model, probe, seed)
    finally:
        torch.set_num_threads(threads)


def _build(name: str, spec: SampleSpec, params: Mapping[str, Any] | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, spec, params)


def _check_deterministic(
    name: str, spec: SampleSpec, params: Mapping[str, Any] | None, seed: int
) -> nn.Module:
    first = _build(name, spec, params, seed).state_dict()
    model = _build(name, spec, params, seed)
    second = model.state_dict()
    assert first.keys() == second.keys(), f"{name}: state dict keys differ between two builds"
    for key, value in first.items():
        assert torch.equal(value, second[key]), (
            f"{name}: {key!r} differs between two builds under torch.manual_seed({seed}); "
            "draw every random number from torch's global generator"
        )
    return model


def _expected_shape(spec: SampleSpec, n: int) -> tuple[int, ...]:
    if spec.task == "multiclass":
        return (n, spec.num_classes)
    if spec.task == "binary":
        return (n,)
    return (n, spec.target_dim)


def _check_output_convention(name: str, model: nn.Module, spec: SampleSpec) -> None:
    model.eval()
    with torch.no_grad():
        stream = ToyStream(spec, seed=99)
        for n in (1, 5):
            out = _forward(model, stream.sample(n))
            want = _expected_shape(spec, n)
            assert isinstance(out, torch.Tensor) and tuple(out.shape) == want, (
                f"{name}: forward on [{n}, {', '.join(map(str, spec.feature_shape))}] returned "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, "
                f"expected {want} ({spec.task}: multiclass logits [n, C], binary logits [n], "
                "regression [n, target_dim])"
            )
            assert out.dtype == torch.float32, f"{name}: outputs are {out.dtype}, not float32"
    model.train()


def _forward(model: nn.Module, sample: Sample) -> torch.Tensor:
    out: torch.Tensor = model(sample[0]) if sample[3] is None else model(sample[0], sample[3])
    return out


def _evaluate(model: nn.Module, head: TaskHead, batch: Sample) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = _forward(model, batch)
        loss = head.loss(out, batch[1], batch[2]).item()
        score = head.score(out, batch[1]).mean().item()
    model.train()
    return loss, score


def _check_learns(
    name: str,
    model: nn.Module,
    spec: SampleSpec,
    stream: ToyStream,
    steps: int,
    batch_size: int,
    lr: float,
) -> None:
    head = TaskHead(spec)
    held_out = stream.sample(512)
    loss_before, _ = _evaluate(model, head, held_out)
    optimizer = (
        build_optimizer(model.parameters(), "adagrad", lr=10 * lr)
        if spec.sparse
        else build_optimizer(param_groups(model, "adam"), "adam", lr=lr)
    )
    learner = Learner(model, head, optimizer)
    skipped = sum(not learner.learn(*stream.sample(batch_size)).applied for _ in range(steps))
    assert skipped == 0, f"{name}: {skipped} of {steps} steps had a non-finite loss or gradient"
    loss_after, score_after = _evaluate(model, head, held_out)
    assert math.isfinite(loss_after) and loss_after < 0.7 * loss_before, (
        f"{name}: held-out loss went {loss_before:.4f} -> {loss_after:.4f} after {steps} steps "
        f"of batch {batch_size} at lr={lr}; expected below 70% of the start. Check the model "
        "is trainable (gradients reach its parameters) or raise steps / lr"
    )
    if spec.is_classification:
        chance = 1.0 / spec.num_classes
        floor = chance + 0.5 * (1.0 - chance)
        assert score_after >= floor, (
            f"{name}: held-out accuracy {score_after:.3f} after {steps} steps; expected at "
            f"least {floor:.3f} on a separable toy stream (chance is {chance:.3f})"
        )


def _check_round_trip(
    name: str,
    spec: SampleSpec,
    params: Mapping[str, Any] | None,
    model: nn.Module,
    probe: Sample,
    seed: int,
) -> None:
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    try:
        blob = save_safetensors(state)
    except (RuntimeError, ValueError) as exc:
        raise AssertionError(
            f"{name}: its state dict cannot be saved as safetensors ({exc}); tensors must not "
            "share storage (untie weights or register only one of them)"
        ) from exc
    loaded = load_safetensors(blob)
    fresh = _build(name, spec, params, seed + 1)  # different initial weights on purpose
    fresh.eval()
    model.eval()
    storage = {key: t.data_ptr() for key, t in fresh.state_dict().items()}
    with torch.no_grad():
        expected = _forward(model, probe)
        result = fresh.load_state_dict(loaded, strict=True)
        assert not result.missing_keys and not result.unexpected_keys, f"{name}: {result}"
        first = _forward(fresh, probe)
        fresh.load_state_dict(loaded, strict=True)
        second = _forward(fresh, probe)
    assert torch.equal(first, expected), (
        f"{name}: outputs after a safetensors round trip differ from the trained model's "
        f"(max abs diff {(first - expected).abs().max().item():.3g}); all state that changes "
        "the output must be in state_dict (use register_buffer for non-parameter tensors)"
    )
    assert torch.equal(first, second), f"{name}: loading the same state twice changed outputs"
    moved = [key for key, t in fresh.state_dict().items() if t.data_ptr() != storage[key]]
    assert not moved, f"{name}: load_state_dict replaced the storage of {moved}; load in place"
    model.train()
