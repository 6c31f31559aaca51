"""The peers: river, deep-river and a last-label baseline, run test-then-train one sample at a time.

Every learner here follows river's protocol (``predict_one`` then ``learn_one`` on dicts), so one
loop evaluates them all. Building the dicts is done once per stream, outside the timed loop.

>>> from peers_streams import build_stream
>>> stream = build_stream("sea_drift", samples=200, seed=1)
>>> result = run_one_at_a_time(LastLabel(), stream.as_dicts(), stream.labels.tolist())
>>> result.samples, 0.0 <= result.accuracy <= 1.0
(200, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from peers_streams import Stream


class OneAtATime(Protocol):
    """River's online classifier protocol, the subset the benchmark uses."""

    # Any: river types x as dict[Hashable, Any], and dict's key type is invariant
    def predict_one(self, x: Any) -> Any: ...

    def learn_one(self, x: Any, y: Any) -> Any: ...


@dataclass(frozen=True)
class RunResult:
    """Whole-stream prequential accuracy and learner throughput (predict + learn)."""

    correct: float
    samples: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else float("nan")

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class LastLabel:
    """Predicts the label of the previous sample: the floor a drifting stream sets."""

    def __init__(self) -> None:
        self._last: int | None = None

    def predict_one(self, x: dict[str, float]) -> int | None:
        return self._last

    def learn_one(self, x: dict[str, float], y: int) -> None:
        self._last = y


def run_one_at_a_time(
    learner: OneAtATime, rows: Sequence[dict[str, float]], labels: Sequence[int]
) -> RunResult:
    """Prequential: predict each sample with the current model, score it, then learn from it."""
    correct = 0
    started = time.perf_counter()
    for x, y in zip(rows, labels, strict=True):
        correct += learner.predict_one(x) == y
        learner.learn_one(x, y)
    return RunResult(float(correct), len(labels), time.perf_counter() - started)


def _river_logistic(stream: Stream) -> OneAtATime:
    from river import linear_model, multiclass, preprocessing

    model: Any = linear_model.LogisticRegression()
    if stream.num_classes > 2:
        model = multiclass.OneVsRestClassifier(model)
    pipeline: OneAtATime = preprocessing.StandardScaler() | model
    return pipeline


def _river_hat(stream: Stream) -> OneAtATime:
    from river import tree

    model: OneAtATime = tree.HoeffdingAdaptiveTreeClassifier(seed=7)
    return model


def _river_arf(stream: Stream) -> OneAtATime:
    from river import forest

    model: OneAtATime = forest.ARFClassifier(n_models=10, seed=7)
    return model


# deep-river's MLP with the same width, optimizer and learning rate as streamtrain's ``mlp``
MLP_WIDTH = 64
MLP_LR = 1e-2


def _deep_river_mlp(stream: Stream) -> OneAtATime:
    from deep_river.classification import MultiLayerPerceptron

    model: OneAtATime = MultiLayerPerceptron(
        n_features=stream.feature_count,
        n_width=MLP_WIDTH,
        n_layers=1,
        n_init_classes=stream.num_classes,
        optimizer_fn="adam",
        lr=MLP_LR,
        is_class_incremental=False,
        seed=7,
    )
    return model


def _last_label(stream: Stream) -> OneAtATime:
    return LastLabel()


@dataclass(frozen=True)
class PeerLearner:
    """A named peer: ``build`` makes a fresh learner for a stream."""

    name: str
    family: str  # "river", "deep-river" or "baseline": the denominator of the ratios
    build: Callable[[Stream], OneAtATime]


PEERS: tuple[PeerLearner, ...] = (
    PeerLearner("last label", "baseline", _last_label),
    PeerLearner("river LogisticRegression (+StandardScaler)", "river", _river_logistic),
    PeerLearner("river HoeffdingAdaptiveTree", "river", _river_hat),
    PeerLearner("river ARF (10 trees)", "river", _river_arf),
    PeerLearner(
        f"deep-river MLP ({MLP_WIDTH} hidden, adam {MLP_LR:g}, 1/step)",
        "deep-river",
        _deep_river_mlp,
    ),
)


def run_peer(peer: PeerLearner, stream: Stream, rows: Sequence[dict[str, float]]) -> RunResult:
    return run_one_at_a_time(peer.build(stream), rows, stream.labels.tolist())
