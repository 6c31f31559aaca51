"""The peers: river learners and trivial baselines, run test-then-train one sample at a time.

Every learner here follows river's protocol (``predict_one`` then ``learn_one`` on dicts), so one
loop evaluates them all. Building the dicts is done once per stream, outside the timed loop.
river's hyperparameters are its defaults, except ARF's ensemble size (``ARF_MODELS``, below
river's 10 so the suite fits in minutes on 2 cores).

>>> from peers_suite import build_stream
>>> stream = build_stream("sea_drift", samples=200, seed=1)
>>> result = run_one_at_a_time(LastLabel(), stream.as_dicts(), stream.labels.tolist(), False)
>>> result.samples, 0.0 <= result.score <= 1.0
(200, True)
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from peers_curve import rolling
from peers_streams import Stream

ARF_MODELS = 3


class OneAtATime(Protocol):
    """River's online learner protocol, the subset the benchmark uses."""

    # Any: river types x as dict[Hashable, Any], and dict's key type is invariant
    def predict_one(self, x: Any) -> Any: ...

    def learn_one(self, x: Any, y: Any) -> Any: ...


@dataclass(frozen=True)
class RunResult:
    """Whole-stream prequential score and learner throughput (predict + learn).

    ``score`` is accuracy for classification and mean absolute error for regression;
    ``rmse`` is the root mean squared error (regression only); ``curve`` the rolling
    prequential score over the stream (:func:`peers_curve.rolling`), for the plots.
    """

    score: float
    rmse: float | None
    samples: int
    seconds: float
    curve: list[float] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class LastLabel:
    """Predicts the previous sample's label (or target): the floor a drifting stream sets."""

    def __init__(self) -> None:
        self._last: Any = None

    def predict_one(self, x: dict[str, float]) -> Any:
        return self._last

    def learn_one(self, x: dict[str, float], y: Any) -> None:
        self._last = y


class MajorityClass:
    """Predicts the most frequent class so far."""

    def __init__(self) -> None:
        self._counts: collections.Counter[int] = collections.Counter()

    def predict_one(self, x: dict[str, float]) -> int | None:
        return self._counts.most_common(1)[0][0] if self._counts else None

    def learn_one(self, x: dict[str, float], y: int) -> None:
        self._counts[y] += 1


class RunningMean:
    """Predicts the mean of the targets so far (0 before the first)."""

    def __init__(self) -> None:
        self._sum, self._n = 0.0, 0

    def predict_one(self, x: dict[str, float]) -> float:
        return self._sum / self._n if self._n else 0.0

    def learn_one(self, x: dict[str, float], y: float) -> None:
        self._sum += y
        self._n += 1


def run_one_at_a_time(
    learner: OneAtATime, rows: Sequence[dict[str, float]], labels: Sequence[Any], regression: bool
) -> RunResult:
    """Prequential: predict each sample with the current model, score it, then learn from it."""
    squares = 0.0
    scores: list[float] = []
    started = time.perf_counter()
    for x, y in zip(rows, labels, strict=True):
        predicted = learner.predict_one(x)
        if regression:
            error = float(y) - float(predicted if predicted is not None else 0.0)
            scores.append(abs(error))
            squares += error * error
        else:
            scores.append(float(predicted == y))
        learner.learn_one(x, y)
    seconds = time.perf_counter() - started
    n = len(labels)
    total = math.fsum(scores)
    rmse = math.sqrt(squares / n) if regression else None
    return RunResult(total / n, rmse, n, seconds, rolling(scores))


def _river_linear(stream: Stream) -> OneAtATime:
    from river import linear_model, multiclass, preprocessing

    model: Any
    if stream.is_regression:
        model = linear_model.LinearRegression()
    else:
        model = linear_model.LogisticRegression()
        if stream.num_classes > 2:
            model = multiclass.OneVsRestClassifier(model)
    pipeline: OneAtATime = preprocessing.StandardScaler() | model
    return pipeline


def _river_hat(stream: Stream) -> OneAtATime:
    from river import tree

    if stream.is_regression:
        return tree.HoeffdingAdaptiveTreeRegressor(seed=7)  # type: ignore[no-any-return]
    return tree.HoeffdingAdaptiveTreeClassifier(seed=7)  # type: ignore[no-any-return]


def _river_arf(stream: Stream) -> OneAtATime:
    from river import forest

    if stream.is_regression:
        return forest.ARFRegressor(n_models=ARF_MODELS, seed=7)  # type: ignore[no-any-return]
    return forest.ARFClassifier(n_models=ARF_MODELS, seed=7)  # type: ignore[no-any-return]


def _baseline(stream: Stream) -> OneAtATime:
    return RunningMean() if stream.is_regression else MajorityClass()


@dataclass(frozen=True)
class PeerLearner:
    """A named peer: ``build`` makes a fresh learner for a stream."""

    name: str
    family: str  # "river" or "baseline"
    build: Callable[[Stream], OneAtATime]


LINEAR_NAME = "river linear (+StandardScaler)"
BASELINE_NAME = "baseline: majority class / running mean"
PEERS: tuple[PeerLearner, ...] = (
    PeerLearner("baseline: last label / last value", "baseline", lambda _s: LastLabel()),
    PeerLearner(BASELINE_NAME, "baseline", _baseline),
    PeerLearner(LINEAR_NAME, "river", _river_linear),
    PeerLearner("river HoeffdingAdaptiveTree", "river", _river_hat),
    PeerLearner(f"river ARF ({ARF_MODELS} trees)", "river", _river_arf),
)


def run_peer(peer: PeerLearner, stream: Stream, rows: Sequence[dict[str, float]]) -> RunResult:
    labels: list[Any] = stream.labels.tolist()
    return run_one_at_a_time(peer.build(stream), rows, labels, stream.is_regression)
