"""Concurrency torture: clients hammer inference while 250 snapshots swap underneath.

Every snapshot fills all weights with its version number, so an answer identifies the weights
that computed it; each answer must equal the offline output of the version it names.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, Prediction, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.threads import Workers
from tests.version_fixtures import (
    expected_value,
    tiny_regression_model,
    version_weights,
)

SWAPS = 250
CLIENTS = 4


def _engine(
    kind: str, slot: WeightSlot
) -> tuple[Callable[[np.ndarray], Prediction], Callable[[], None]]:
    cpu = torch.device("cpu")
    head = head_for(SampleSpec((4,), "regression"))
    if kind == "direct":
        direct = DirectEngine(slot, head, cpu)
        return direct.run, direct.close
    batching = BatchingEngine(
        slot, head_for(SampleSpec((4,), "regression")), cpu, max_batch_size=16, max_wait_s=0.0005
    )
    return (lambda x: batching.submit(x).result(timeout=10)), batching.close


@pytest.mark.parametrize("kind", ["direct", "batching"])
def test_every_answer_matches_the_version_it_names(kind: str) -> None:
    model = tiny_regression_model(4)
    slot = WeightSlot(tiny_regression_model(4), drain_timeout_s=10.0)
    slot.load(version_weights(model, 1), SnapshotHeader(1, "r"))
    infer, close = _engine(kind, slot)
    done = threading.Event()
    failures: list[str] = []
    seen: list[set[int]] = [set() for _ in range(CLIENTS)]
    answered = [0] * CLIENTS

    def client(index: int) -> None:
        rng = random.Random(index)
        while not done.is_set():
            rows = rng.randint(1, 3)
            features = np.array(
                [[rng.uniform(-2, 2) for _ in range(4)] for _ in range(rows)], dtype=np.float32
            )
            try:
                result = infer(features)
            except Exception as exc:
                failures.append(f"client {index}: {exc!r}")
                return
            version = result.info.version
            for row, value in zip(features, result.outputs["value"][:, 0], strict=True):
                expected = expected_value(version, row.tolist())
                if abs(float(value) - expected) > 1e-5 * max(1.0, abs(expected)):
                    failures.append(f"version {version}: got {value}, expected {expected}")
            seen[index].add(version)
            answered[index] += 1

    def swapper() -> None:
        for version in range(2, SWAPS + 2):
            slot.load(version_weights(model, version), SnapshotHeader(version, "r"))
            # Let a few requests land on each version before the next swap.
            target = sum(answered) + CLIENTS
            while sum(answered) < target and not failures:
                threading.Event().wait(0.0002)
        done.set()

    clients, swaps = Workers(), Workers()  # a thread's exception fails the test at join
    for i in range(CLIENTS):
        clients.start(client, i)
    swaps.start(swapper)
    try:
        swaps.join(60)
    finally:
        done.set()
        clients.join(10)
        close()
    assert not failures, failures[:5]
    assert slot.info is not None and slot.info.version == SWAPS + 1
    versions = set().union(*seen)
    assert len(versions) > SWAPS // 2, f"answers came from only {len(versions)} versions"
    assert sum(answered) >= SWAPS
