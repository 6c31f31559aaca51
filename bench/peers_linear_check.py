"""Is the default model ever worse than a linear one? Eight new streams, several seeds.

``python bench/peers_linear_check.py [--samples 4000] [--seeds 1 2 3] [--streams ...]``

Every learner runs prequential (predict, score, then learn) over the same samples of each
stream of ``peers_hard_streams.py``:

* streamtrain's ``auto`` (the default) and ``linear`` with the CLI defaults, through the same
  ``Learner`` the trainer runs (``peers_inprocess.build_learner``: no Kafka), at micro-batch
  1, and ``auto`` at 16; the predictions scored are the outputs of the forward pass
  ``Learner.learn`` scores before it steps (a forward hook), so nothing is run twice;
* river's ``LogisticRegression`` / ``LinearRegression`` with river's defaults, fed raw (what
  a user who pastes river's example gets), and the same behind ``StandardScaler`` (how the
  Peers table runs river);
* a well-set online linear model: ``StandardScaler`` then river's linear model on AdaGrad at
  0.1 (a per-feature rate: rare columns and unscaled ones learn at their own pace).

Binary streams report accuracy, log loss (probabilities clipped to [1e-7, 1 - 1e-7]) and AUC
over the whole stream, and log loss over its last quarter (after drift, once warmed up);
regression streams MAE and RMSE, and MAE over the last quarter. Each figure is the mean over
the seeds, with the spread (max - min) beside the default's gap to the best linear learner.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peers_hard_streams import HARD, build_hard_stream
from peers_inprocess import ModelConfig, build_learner
from peers_streams import Stream

EPS = 1e-7


@dataclass(frozen=True)
class Scores:
    """One learner on one stream and seed: the metrics by name."""

    values: dict[str, float]


def binary_scores(labels: np.ndarray[Any, Any], probability: np.ndarray[Any, Any]) -> Scores:
    from sklearn.metrics import roc_auc_score

    p = np.clip(probability.astype(np.float64), EPS, 1 - EPS)
    y = labels.astype(np.float64)
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    late = len(y) * 3 // 4
    auc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
    return Scores(
        {
            "accuracy": float(((p > 0.5) == (y > 0.5)).mean()),
            "log_loss": float(losses.mean()),
            "auc": float(auc),
            "late_log_loss": float(losses[late:].mean()),
        }
    )


def regression_scores(labels: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]) -> Scores:
    errors = predicted.astype(np.float64) - labels.astype(np.float64)
    late = len(errors) * 3 // 4
    return Scores(
        {
            "mae": float(np.abs(errors).mean()),
            "rmse": float(math.sqrt(float((errors**2).mean()))),
            "late_mae": float(np.abs(errors[late:]).mean()),
        }
    )


def score(stream: Stream, predictions: np.ndarray[Any, Any]) -> Scores:
    if stream.is_regression:
        return regression_scores(stream.labels, predictions)
    return binary_scores(stream.labels, predictions)


def run_streamtrain(config: ModelConfig, stream: Stream, batch_size: int) -> Scores:
    """Prequential predictions of ``Learner.learn`` (probability of class 1, or the value)."""
    learner = build_learner(config, stream, batch_size)
    outputs: list[torch.Tensor] = []
    learner.model.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
    x = torch.from_numpy(stream.features)
    y = torch.from_numpy(stream.labels)
    w = torch.ones(stream.size)
    for i in range(0, stream.size, batch_size):
        learner.learn(x[i : i + batch_size], y[i : i + batch_size], w[i : i + batch_size])
    out = torch.cat(outputs).reshape(-1)
    if not stream.is_regression:
        out = torch.sigmoid(out.double())
    return score(stream, out.numpy())


def _river_linear(stream: Stream, scaled: bool, adagrad: bool) -> Any:
    from river import linear_model, optim, preprocessing

    kwargs: dict[str, Any] = {"optimizer": optim.AdaGrad(0.1)} if adagrad else {}
    model: Any = (
        linear_model.LinearRegression(**kwargs)
        if stream.is_regression
        else linear_model.LogisticRegression(**kwargs)
    )
    return preprocessing.StandardScaler() | model if scaled else model


def run_river(stream: Stream, scaled: bool, adagrad: bool = False) -> Scores:
    model = _river_linear(stream, scaled, adagrad)
    predictions = np.empty(stream.size)
    for i, (x, y) in enumerate(zip(stream.as_dicts(), stream.labels.tolist(), strict=True)):
        if stream.is_regression:
            predictions[i] = model.predict_one(x)
        else:
            predictions[i] = model.predict_proba_one(x).get(1, 0.0)
        model.learn_one(x, y)
    return score(stream, predictions)


LEARNERS: dict[str, Callable[[Stream], Scores]] = {
    "st auto B1 (default)": lambda s: run_streamtrain(ModelConfig("auto"), s, 1),
    "st auto B16": lambda s: run_streamtrain(ModelConfig("auto"), s, 16),
    "st linear B1": lambda s: run_streamtrain(ModelConfig("linear"), s, 1),
    "river linear, raw (river defaults)": lambda s: run_river(s, scaled=False),
    "river linear + StandardScaler": lambda s: run_river(s, scaled=True),
    "well-set: StandardScaler + AdaGrad 0.1": lambda s: run_river(s, scaled=True, adagrad=True),
}
DEFAULT = "st auto B1 (default)"
LINEAR = [name for name in LEARNERS if "river" in name or "well-set" in name]
LOWER_IS_BETTER = {"log_loss", "late_log_loss", "mae", "rmse", "late_mae"}


def run(
    streams: Sequence[str], seeds: Sequence[int], samples: int, learners: Sequence[str]
) -> None:
    for name in streams:
        table: dict[str, list[Scores]] = {learner: [] for learner in learners}
        for seed in seeds:
            stream = build_hard_stream(name, samples, seed)
            for learner in learners:
                table[learner].append(LEARNERS[learner](stream))
        print_table(name, table)


def print_table(name: str, table: dict[str, list[Scores]]) -> None:
    metrics = list(next(iter(table.values()))[0].values)
    print(f"\n### {name}\n", flush=True)
    print("| learner | " + " | ".join(metrics) + " |")
    print("|---|" + "---:|" * len(metrics))
    for learner, runs in table.items():
        cells = []
        for metric in metrics:
            values = [r.values[metric] for r in runs]
            spread = max(values) - min(values)
            cells.append(f"{statistics.fmean(values):.4f} ±{spread / 2:.4f}")
        print(f"| {learner} | " + " | ".join(cells) + " |")
    if DEFAULT in table:
        linear = [learner for learner in table if learner in LINEAR]
        for metric in metrics:
            gaps = _gaps(table, linear, metric)
            if gaps:
                print(f"- {metric}: default minus best linear per seed: {gaps}")


def _gaps(table: dict[str, list[Scores]], linear: list[str], metric: str) -> str:
    if not linear:
        return ""
    out = []
    for i, run in enumerate(table[DEFAULT]):
        others = [table[learner][i].values[metric] for learner in linear]
        best = min(others) if metric in LOWER_IS_BETTER else max(others)
        out.append(f"{run.values[metric] - best:+.4f}")
    return " ".join(out)


def run_suite(streams: Sequence[str], samples: int, config: ModelConfig) -> None:
    """``config`` at batch 1 and 16 on the Peers suite's streams (seed 7), scored as the Peers
    table is (accuracy, or MAE): to set beside bench/README.md, Peers."""
    from peers_inprocess import run_in_process
    from peers_suite import build_stream

    print(f"| stream | {config.label} B1 | B16 |\n|---|---:|---:|", flush=True)
    for name in streams:
        stream = build_stream(name, samples=samples, seed=7)
        b1, b16 = (run_in_process(config, stream, b).score for b in (1, 16))
        print(f"| {name} | {b1:.3f} | {b16:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--streams", nargs="+", choices=list(HARD), default=list(HARD))
    parser.add_argument("--learners", nargs="+", choices=list(LEARNERS), default=list(LEARNERS))
    parser.add_argument(
        "--suite",
        nargs="+",
        metavar="STREAM",
        help="instead: `auto` at batch 1 and 16 on these Peers streams (seed 7, --samples)",
    )
    parser.add_argument("--loss", default="auto", help="model.loss for --suite")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.suite:
        run_suite(args.suite, args.samples, ModelConfig("auto", loss=args.loss))
        return
    run(args.streams, args.seeds, args.samples, args.learners)


if __name__ == "__main__":
    main()
