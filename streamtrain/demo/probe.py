"""Ask the live server about real samples of the stream being trained on, and check the answer.

The pool is the producer's own stream (same dataset, same seed), so a sample's label follows
the concept the trainer is learning; for a drifting stream the probe picks samples from about
where the trainer has got to.

>>> from streamtrain.datasets import get_dataset
>>> pool = SamplePool.from_dataset(get_dataset("hyperplane"), size=2000)
>>> features, label = pool.near(position=1500, turn=3)
>>> len(features), label in (0, 1)
(16, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from streamtrain.datasets import DatasetInfo
from streamtrain.demo.dashboard import Prediction
from streamtrain.demo.plan import infer_body

POOL_SIZE = 20_000
SPREAD = 1_000


class ProbeError(RuntimeError):
    """The server answered a prediction request with something other than a valid result."""


@dataclass(frozen=True)
class SamplePool:
    """The first ``size`` samples of a dataset stream, flattened, with their labels."""

    features: npt.NDArray[np.float32]  # [size, feature_size]
    labels: npt.NDArray[np.int64]
    feature_shape: tuple[int, ...]
    period: int | None = None
    """A stream whose concept recurs every ``period`` samples repeats its labelling there: the
    pool then holds one period and wraps positions around it."""

    @classmethod
    def from_dataset(
        cls, info: DatasetInfo, size: int = POOL_SIZE, seed: int = 0, period: int | None = None
    ) -> SamplePool:
        size = period or size
        chunks = list(info.iterate(size, seed=seed, chunk_size=4096))
        features = np.concatenate([c.features for c in chunks]).reshape(size, -1)
        labels = np.concatenate([np.asarray(c.labels) for c in chunks]).astype(np.int64)
        return cls(features.astype(np.float32), labels, info.spec.feature_shape, period)

    def near(self, position: int, turn: int) -> tuple[list[float], int]:
        """A sample from the ``SPREAD`` samples before ``position`` in the stream (clamped)."""
        size = len(self.labels)
        if self.period is not None:
            position %= self.period
        spread = min(SPREAD, size)
        start = min(max(0, position - spread), size - spread)
        index = start + (turn * 7919) % spread  # a prime stride walks the window evenly
        return [float(v) for v in self.features[index]], int(self.labels[index])


def predict(
    client: httpx.Client,
    url: str,
    features: list[float],
    label: int,
    feature_shape: tuple[int, ...],
) -> Prediction:
    """POST one row to the OIP infer endpoint; raise ProbeError unless it answers 200."""
    try:
        response = client.post(url, json=infer_body(features, feature_shape), timeout=2.0)
    except httpx.HTTPError as exc:
        raise ProbeError(f"infer request to {url} failed: {exc}") from exc
    if response.status_code != 200:
        raise ProbeError(f"infer answered HTTP {response.status_code}: {response.text[:200]}")
    return parse_prediction(response.json(), label)


def parse_prediction(doc: dict[str, Any], label: int) -> Prediction:
    """The predicted class and version from an OIP response body."""
    outputs = {o.get("name"): o for o in doc.get("outputs", []) if isinstance(o, dict)}
    try:
        predicted = int(outputs["predicted_class"]["data"][0])
        version = str(doc["model_version"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProbeError(f"infer response lacks predicted_class/model_version: {doc}") from exc
    return Prediction(predicted=predicted, label=label, model_version=version)
