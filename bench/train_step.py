"""The bare learning step's throughput: ``Learner.learn`` on pre-built device tensors.

Run: ``.venv/bin/python bench/train_step.py [--model mlp] [--batch-sizes 32 256 1024]
[--seconds 2] [--threads N]``

Next to it, a plain PyTorch loop on the same model and data shows the Learner's own overhead.

No Kafka, no decoding: the features are built once on the device and the loop only calls
``learn`` — the ceiling the full trainer can approach. The sync pattern is the real loop's: one
host synchronization per step (the guard's finiteness flag inside ``learn``); the loss is read
back only every ``log_every`` steps, as the trainer does for its metrics.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.testing import ToyStream
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

DEFAULT_SPEC = SampleSpec(feature_shape=(16,), task="binary")
DEFAULT_PARAMS: Mapping[str, Any] = {"hidden_sizes": [64]}
_DISTINCT_BATCHES = 8  # cycled, so the step never sees one batch only


def make_learner(
    model_name: str,
    spec: SampleSpec,
    device: torch.device,
    params: Mapping[str, Any] | None = None,
    lr: float = 1e-3,
    *,
    optimizer: str = "adam",
    autocast_dtype: torch.dtype | None = None,
) -> Learner:
    """A learner for ``model_name`` on ``device`` with the trainer's defaults (Adam; a model
    with sparse tables needs a row-wise optimizer such as ``adagrad``)."""
    torch.manual_seed(0)
    model = build_model(model_name, spec, params).to(device)
    opt = build_optimizer(model.parameters(), optimizer, lr=lr)
    return Learner(model, TaskHead(spec), opt, device=device, autocast_dtype=autocast_dtype)


def prebuilt_batches(
    spec: SampleSpec, batch_size: int, device: torch.device, count: int = _DISTINCT_BATCHES
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` toy batches already on ``device``."""
    stream = ToyStream(spec, seed=1)
    return [tuple(t.to(device) for t in stream.batch(batch_size)) for _ in range(count)]  # type: ignore[misc]


def bare_step_rate(
    model_name: str,
    spec: SampleSpec,
    batch_size: int,
    seconds_or_steps: float | int,
    device: torch.device | str,
    *,
    params: Mapping[str, Any] | None = None,
    warmup_steps: int = 20,
    log_every: int = 50,
    optimizer: str = "adam",
    lr: float = 1e-3,
    autocast_dtype: torch.dtype | None = None,
    batches: Sequence[tuple[Any, ...]] | None = None,
) -> float:
    """Samples per second of the bare ``learn`` loop.

    ``seconds_or_steps``: an ``int`` runs that many steps, a ``float`` runs for that many
    seconds (checked every step, after the step's own sync). ``batches``: ``learn``'s
    arguments on the device (``x, y, w`` or ``x, y, w, sparse``), cycled; toy batches of
    ``batch_size`` when None.
    """
    device = torch.device(device)
    if params is None and model_name == "mlp":
        params = DEFAULT_PARAMS
    learner = make_learner(
        model_name, spec, device, params, lr, optimizer=optimizer, autocast_dtype=autocast_dtype
    )
    if batches is None:
        batches = prebuilt_batches(spec, batch_size, device)
    for i in range(warmup_steps):
        learner.learn(*batches[i % len(batches)])
    _synchronize(device)
    by_steps = isinstance(seconds_or_steps, int)
    steps = 0
    loss_read = 0.0
    start = time.perf_counter()
    while True:
        outcome = learner.learn(*batches[steps % len(batches)])
        steps += 1
        if steps % log_every == 0:
            loss_read += outcome.loss.item()  # the loop's periodic metrics read-back
        if by_steps:
            if steps >= seconds_or_steps:
                break
        elif time.perf_counter() - start >= seconds_or_steps:
            break
    _synchronize(device)
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed


def plain_step_rate(
    model_name: str,
    spec: SampleSpec,
    batch_size: int,
    steps: int,
    device: torch.device | str,
    *,
    params: Mapping[str, Any] | None = None,
    warmup_steps: int = 20,
) -> float:
    """Samples per second of a plain PyTorch loop (forward, loss, backward, Adam step, one
    ``.item()``) on the same model and data: the reference the Learner's overhead (prequential
    score, gradient norm, guard) is measured against."""
    device = torch.device(device)
    if params is None and model_name == "mlp":
        params = DEFAULT_PARAMS
    learner = make_learner(model_name, spec, device, params)
    model, head, optimizer = learner.model, learner.head, learner.optimizer
    batches = prebuilt_batches(spec, batch_size, device)

    def step(i: int) -> None:
        x, y, w = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = head.loss(model(x), y, w)
        torch.autograd.backward(loss)
        optimizer.step()
        loss.item()

    for i in range(warmup_steps):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    spec = DEFAULT_SPEC
    shape = "x".join(map(str, spec.feature_shape))
    print(
        f"model={args.model} spec={shape} {spec.task} adam, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"{'device':8} {'batch':>6} {'samples/s':>12} {'steps/s':>9} {'plain torch steps/s':>20}")
    for device in devices:
        for batch_size in args.batch_sizes:
            rate = bare_step_rate(args.model, spec, batch_size, args.seconds, device)
            steps = max(1, int(rate / batch_size * args.seconds))
            plain = plain_step_rate(args.model, spec, batch_size, steps, device)
            print(
                f"{device.type:8} {batch_size:>6} {rate:>12,.0f} {rate / batch_size:>9,.0f} "
                f"{plain / batch_size:>20,.0f}"
            )


if __name__ == "__main__":
    main()
