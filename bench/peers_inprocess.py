"""streamtrain's own step code on in-memory arrays: no Kafka, the same Learner the trainer runs.

Prequential with micro-batches of ``B``: all ``B`` samples are predicted with the current
weights, then the model learns from them (``Learner.learn`` scores before it steps). So a larger
``B`` means staler predictions inside a batch and fewer, larger steps.

>>> from peers_streams import build_stream
>>> stream = build_stream("sea_drift", samples=256, seed=1)
>>> result = run_in_process(STREAMTRAIN_MODELS[0], stream, batch_size=16)
>>> result.samples, 0.0 <= result.accuracy <= 1.0
(256, True)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from peers_river import MLP_LR, MLP_WIDTH, RunResult
from peers_streams import Stream

from streamtrain.spec import SampleSpec, Task
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import OptimizerName, build_optimizer
from streamtrain.train.task import TaskHead


@dataclass(frozen=True)
class ModelConfig:
    """One streamtrain model configuration, used unchanged on every stream.

    ``sqrt_batch_lr`` multiplies the learning rate by sqrt(batch size): a batch of B takes one
    step where batch 1 takes B, so without it larger batches simply learn more slowly.
    ``params["standardize"]`` is always set explicitly, so a row means the same model whatever
    the built-in's default; ``pipeline`` says whether it also runs through Kafka.
    """

    name: str  # the model registry name
    optimizer: OptimizerName
    lr: float
    params: dict[str, Any] = field(default_factory=dict)
    sqrt_batch_lr: bool = False
    pipeline: bool = True

    @property
    def standardized(self) -> bool:
        return bool(self.params.get("standardize", False))

    @property
    def label(self) -> str:
        shape = ""
        if "hidden_sizes" in self.params:
            shape = f"{'x'.join(str(h) for h in self.params['hidden_sizes'])} hidden, "
        scaled = "×√B" if self.sqrt_batch_lr else ""
        inputs = "standardize" if self.standardized else "raw"
        return f"{self.name} ({shape}{self.optimizer} {self.lr:g}{scaled}, {inputs})"

    def lr_at(self, batch_size: int) -> float:
        return self.lr * math.sqrt(batch_size) if self.sqrt_batch_lr else self.lr


# raw: the models before online standardisation (in-process only: the earlier report showed
# their pipeline rows equal the in-process ones); standardize: the built-ins' default now
STREAMTRAIN_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig("linear", "adam", 1e-2, {"standardize": False}, pipeline=False),
    ModelConfig(
        "mlp", "adam", MLP_LR, {"hidden_sizes": [MLP_WIDTH], "standardize": False}, pipeline=False
    ),
    ModelConfig("linear", "adam", 1e-2, {"standardize": True}),
    ModelConfig("mlp", "adam", MLP_LR, {"hidden_sizes": [MLP_WIDTH], "standardize": True}),
)
# the same models with the learning rate grown with the batch: what closes the batch gap
SCALED_MODELS: tuple[ModelConfig, ...] = tuple(
    dataclasses.replace(config, sqrt_batch_lr=True) for config in STREAMTRAIN_MODELS
)


def stream_spec(stream: Stream) -> SampleSpec:
    task: Task = "binary" if stream.num_classes == 2 else "multiclass"
    return SampleSpec(
        feature_shape=(stream.feature_count,), task=task, num_classes=stream.num_classes
    )


def build_learner(
    config: ModelConfig, stream: Stream, batch_size: int = 1, seed: int = 7
) -> Learner:
    """The objects ``streamtrain train`` builds, without the Kafka source around them.

    Two-class streams use the ``binary`` task (one logit, BCE), as a user would configure them;
    digits uses ``multiclass`` (softmax, cross-entropy).
    """
    torch.manual_seed(seed)
    spec = stream_spec(stream)
    model = build_model(config.name, spec, config.params)
    optimizer = build_optimizer(model.parameters(), config.optimizer, lr=config.lr_at(batch_size))
    return Learner(model, TaskHead(spec), optimizer)


def run_in_process(config: ModelConfig, stream: Stream, batch_size: int) -> RunResult:
    """Whole-stream prequential accuracy and samples/s of ``Learner.learn`` at ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    learner = build_learner(config, stream, batch_size)
    features = torch.from_numpy(stream.features)
    labels = torch.from_numpy(stream.labels)
    weights = torch.ones(stream.size)
    # slicing views up front keeps the timed loop to what the trainer does per batch
    chunks = [
        (features[i : i + batch_size], labels[i : i + batch_size], weights[i : i + batch_size])
        for i in range(0, stream.size, batch_size)
    ]
    scores: list[torch.Tensor] = []
    started = time.perf_counter()
    for x, y, w in chunks:
        scores.append(learner.learn(x, y, w).score_sum)
    correct = float(torch.stack(scores).sum())
    return RunResult(correct, stream.size, time.perf_counter() - started)
