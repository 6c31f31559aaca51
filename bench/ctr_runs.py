"""The ``ctr`` click-stream runs shared by ``bench/ctr.py`` (accuracy and speed against River and
Vowpal Wabbit) and ``bench/ctr_churn.py`` (hashed vs dynamic tables under ID churn): the stream,
each learner's prequential run, and the results table. Its own module so that neither bench
imports the other (``bench/ctr.py --churn`` dispatches to the churn bench)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from streamtrain.datasets.ctr import ctr
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

# what every runner times with; bench/ctr_churn.py switches to CPU time (time.process_time),
# steadier than wall time on a machine shared with other work
CLOCK: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class Stream:
    x: np.ndarray  # [n, dims] float32
    users: np.ndarray  # [n] int64 IDs
    items: np.ndarray  # [n] int64 IDs
    y: np.ndarray  # [n] int64 clicks


@dataclass(frozen=True)
class Result:
    name: str
    probs: np.ndarray
    seconds: float

    def row(self, y: np.ndarray) -> str:
        half = len(y) // 2
        late = _log_loss(y[half:], self.probs[half:])
        return (
            f"| {self.name} | {_log_loss(y, self.probs):.4f} | {late:.4f} "
            f"| {roc_auc_score(y, self.probs):.4f} | {len(y) / self.seconds:,.0f} |"
        )


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def make_stream(
    samples: int, seed: int, users: int, items: int, new_item_every: int = 50
) -> Stream:
    info = ctr(users=users, items=items, new_item_every=new_item_every)
    parts = list(info.iterate(samples, seed=seed, chunk_size=4096))
    return Stream(
        np.concatenate([c.features for c in parts]),
        np.concatenate([c.sparse.features["user"].ids for c in parts]),  # type: ignore[union-attr]
        np.concatenate([c.sparse.features["item"].ids for c in parts]),  # type: ignore[union-attr]
        np.concatenate([c.labels for c in parts]),
    )


def run_streamtrain(
    name: str,
    params: dict[str, object],
    lr: float,
    s: Stream,
    batch: int,
    probe: Callable[[int], None] | None = None,
) -> Result:
    """``probe``, when given, is called after each batch with the samples learned so far
    (outside the timed loop's work only in that it is cheap: ``ctr_churn.py`` reads RSS)."""
    info = ctr()
    torch.manual_seed(0)
    model = build_model(name, info.spec, params)
    learner = Learner(
        model, TaskHead(info.spec), build_optimizer(model.parameters(), "adagrad", lr)
    )
    x, y = torch.from_numpy(s.x), torch.from_numpy(s.y)
    users, items = torch.from_numpy(s.users), torch.from_numpy(s.items)
    probs = np.zeros(len(s.y))
    ones = torch.ones(len(s.y))
    started = CLOCK()
    for lo in range(0, len(s.y), batch):
        hi = min(lo + batch, len(s.y))
        n = hi - lo
        offsets = torch.arange(n)
        sparse = {
            "user": JaggedTensor(users[lo:hi], offsets, ones[:n]),
            "item": JaggedTensor(items[lo:hi], offsets, ones[:n]),
        }
        with torch.no_grad():
            probs[lo:hi] = torch.sigmoid(model(x[lo:hi], sparse)).numpy()
        learner.learn(x[lo:hi], y[lo:hi], ones[:n], sparse)
        if probe is not None:
            probe(hi)
    return Result(f"streamtrain {name} (batch {batch})", probs, CLOCK() - started)


_HEADER = "| learner | log loss | log loss, 2nd half | AUC | samples/s |\n|---|---|---|---|---|"


def run_table(runs: list[Callable[[], Result]], s: Stream) -> list[Result]:
    """Run each learner in turn, printing its row of the results table as it ends."""
    print(_HEADER)
    results = []
    for run in runs:
        result = run()
        results.append(result)
        print(result.row(s.y), flush=True)
    return results


def print_table(results: list[Result], s: Stream) -> None:
    """The results table of learners that ran already (``ctr_churn.taking_turns``)."""
    print(_HEADER)
    for result in results:
        print(result.row(s.y), flush=True)


def run_river_fm(s: Stream, factors: int) -> Result:
    from river import facto, optim

    model = facto.FMClassifier(
        n_factors=factors,
        weight_optimizer=optim.SGD(0.05),
        latent_optimizer=optim.SGD(0.05),
        seed=0,
    )
    rows = _dicts(s)
    probs = np.zeros(len(s.y))
    started = CLOCK()
    for i, (features, label) in enumerate(zip(rows, s.y.tolist(), strict=True)):
        probs[i] = model.predict_proba_one(features).get(True, 0.5)
        model.learn_one(features, bool(label))
    return Result(f"River FMClassifier ({factors} factors)", probs, CLOCK() - started)


def _dicts(s: Stream) -> list[dict[str, float]]:
    dims = s.x.shape[1]
    return [
        {f"user={u}": 1.0, f"item={i}": 1.0, **{f"x{j}": float(x[j]) for j in range(dims)}}
        for u, i, x in zip(s.users.tolist(), s.items.tolist(), s.x, strict=True)
    ]


def run_vw(s: Stream, bits: int) -> Result:
    from vowpalwabbit import pyvw

    vw = pyvw.Workspace(f"--loss_function logistic --link logistic -b {bits} --quiet")
    lines = [
        f"|u {u} |i {i} |d " + " ".join(f"x{j}:{v:.5f}" for j, v in enumerate(x))
        for u, i, x in zip(s.users.tolist(), s.items.tolist(), s.x.tolist(), strict=True)
    ]
    probs = np.zeros(len(s.y))
    started = CLOCK()
    for k, (line, label) in enumerate(zip(lines, s.y.tolist(), strict=True)):
        probs[k] = vw.predict(line)
        vw.learn(f"{1 if label else -1} {line}")
    seconds = CLOCK() - started
    vw.finish()
    return Result(f"Vowpal Wabbit hashed LR (2^{bits})", probs, seconds)
