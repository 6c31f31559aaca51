"""streamtrain's own step code on in-memory arrays: no Kafka, the same Learner the trainer runs.

The learner is built from the settings tree exactly as ``streamtrain train`` builds it
(``streamtrain/builders/trainer.py``): model, optimizer and schedule from ``load_settings()``,
so a config with no overrides is what a CLI user gets. Prequential with micro-batches of
``B``: all ``B`` samples are predicted with the current weights, then the model learns from
them (``Learner.learn`` scores before it steps).

>>> from peers_suite import build_stream
>>> stream = build_stream("sea_drift", samples=256, seed=1)
>>> result = run_in_process(DEFAULTS[0], stream, batch_size=16)
>>> result.samples, 0.0 <= result.score <= 1.0
(256, True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from peers_curve import rolling
from peers_river import RunResult
from peers_streams import Stream

from streamtrain.config import Settings, load_settings
from streamtrain.sample.spec import SampleSpec, spec_for_model
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import (
    build_optimizer,
    build_scheduler,
    param_groups,
    step_lr_scales,
)
from streamtrain.train.task import TaskHead


@dataclass(frozen=True)
class ModelConfig:
    """One streamtrain configuration, used unchanged on every stream.

    ``optimizer`` and ``params`` override the CLI defaults (``optimizer.*`` settings and
    ``model.params``); empty means the defaults. ``sqrt_batch_lr`` multiplies the learning
    rate by sqrt(batch size); ``schedule_free`` swaps in schedulefree's AdamW (scored and
    stepped at its training point, as a stream has no separate evaluation phase).
    """

    name: str  # the model registry name
    tag: str = "defaults"
    optimizer: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    sqrt_batch_lr: bool = False
    schedule_free: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} ({self.tag})"


# the default model (`auto`) and the two it combines, each alone
DEFAULTS: tuple[ModelConfig, ...] = (ModelConfig("linear"), ModelConfig("mlp"), ModelConfig("auto"))


def stream_settings(config: ModelConfig, stream: Stream, batch_size: int = 1) -> Settings:
    """The settings a user would write for ``stream``, plus the config's overrides."""
    optimizer = dict(config.optimizer)
    if config.sqrt_batch_lr:
        base = optimizer.get("lr", load_settings().optimizer.lr)
        optimizer["lr"] = base * math.sqrt(batch_size)
    return load_settings(
        overrides={
            "model": {
                "name": config.name,
                "task": stream.task,
                "input_shape": [stream.feature_count],
                "num_classes": max(stream.num_classes, 2),
                "params": config.params,
            },
            "optimizer": optimizer,
            "train": {"seed": 7},
        }
    )


def stream_spec(stream: Stream) -> SampleSpec:
    return spec_for_model(stream_settings(ModelConfig("linear"), stream).model)


def build_learner(config: ModelConfig, stream: Stream, batch_size: int = 1) -> Learner:
    """The Learner ``build_trainer`` makes from these settings, without the Kafka around it."""
    settings = stream_settings(config, stream, batch_size)
    opt = settings.optimizer
    torch.manual_seed(settings.train.seed)
    spec = spec_for_model(settings.model)
    model = build_model(settings.model.name, spec, settings.model.params)
    if config.schedule_free:
        import schedulefree

        optimizer: torch.optim.Optimizer = schedulefree.AdamWScheduleFree(
            model.parameters(), lr=opt.lr, warmup_steps=0
        )
        optimizer.train()  # type: ignore[attr-defined]
    else:
        optimizer = build_optimizer(
            param_groups(model, opt.name), opt.name, opt.lr, opt.momentum, opt.weight_decay
        )
    scheduler = build_scheduler(optimizer, opt.schedule, opt.schedule_steps, opt.warmup_steps)
    return Learner(
        model,
        TaskHead(spec, settings.model.loss),
        optimizer,
        scheduler,
        clip_grad_norm=opt.clip_grad_norm,
        max_bad_steps=settings.train.max_bad_steps,
        step_samples=opt.step_samples,
        step_lr_scales=None
        if config.schedule_free
        else step_lr_scales(model, opt.name, opt.step_samples),
    )


def run_in_process(config: ModelConfig, stream: Stream, batch_size: int) -> RunResult:
    """Whole-stream prequential score and samples/s of ``Learner.learn`` at ``batch_size``.

    Regression also needs the squared errors: a forward hook keeps the outputs of every
    training forward, which are the predictions ``learn`` scores (step by step when a batch is
    split into several steps; the built-ins compute the same function in train and eval mode).
    """
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
    predictions: list[torch.Tensor] = []
    if stream.is_regression:
        learner.model.register_forward_hook(lambda _m, _a, out: predictions.append(out.detach()))
    scores: list[torch.Tensor] = []
    started = time.perf_counter()
    for x, y, w in chunks:
        scores.append(learner.learn(x, y, w).score_sum)
    seconds = time.perf_counter() - started
    sums = torch.stack(scores)
    score = float(sums.sum()) / stream.size
    # a step's samples share its mean score (exact per sample at batch 1)
    sizes = torch.tensor([len(y) for _, y, _ in chunks])
    per_sample = torch.repeat_interleave(sums / sizes, sizes)
    rmse = None
    if stream.is_regression:
        predicted = torch.cat(predictions).reshape(labels.shape)
        rmse = math.sqrt(float((predicted - labels).square().mean()))
    return RunResult(score, rmse, stream.size, seconds, rolling(per_sample.tolist()))
