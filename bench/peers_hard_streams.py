"""Eight seeded streams built to break a default that is "never worse than linear" (learners45).

None of them is in the suite (``peers_suite.py``) or among the held-out river generators
(``peers_new_streams.py``): each is made of numpy draws from one ``default_rng(seed)``, so a
seed gives the same samples on every machine. All are linear concepts (or linear in the raw
values a user sends), so a linear learner is the reference a default must not fall behind:

* ``unscaled``: 8 features from ~1e-3 to ~3e5 in size, three with large offsets (1e6);
* ``heavy_tail``: 10 Student-t features with 1.5 degrees of freedom (infinite variance);
* ``rare_positive``: 10 Gaussian features, ~1% positive labels (scored by log loss / AUC);
* ``hashed_ids``: 8 categorical fields of Zipf-distributed IDs with a long tail of unseen
  ones, hashed into 32 buckets each and sent one-hot (256 columns, most of them rare);
* ``noisy_drift``: 10 features, 15% label noise, an abrupt concept change at a third, then
  a gradual rotation to a third concept over the last third;
* ``outlier_target``: linear regression target with 3% gross outliers (±hundreds of sd);
* ``needle``: 200 Gaussian features of which 2 decide the label;
* ``counts``: 12 integer count features (negative binomial, means 0.2 to 1,000, many zeros).

>>> stream = build_hard_stream("hashed_ids", samples=50, seed=1)
>>> stream.features.shape, stream.task
((50, 256), 'binary')
>>> again = build_hard_stream("needle", 30, 3).features
>>> bool((build_hard_stream("needle", 30, 3).features == again).all())
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from peers_streams import Stream

Floats = npt.NDArray[np.float64]


def _bernoulli(rng: np.random.Generator, logits: Floats) -> npt.NDArray[np.int64]:
    probability = 1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0)))
    return (rng.random(logits.shape[0]) < probability).astype(np.int64)


def _direction(rng: np.random.Generator, dims: int, norm: float) -> Floats:
    w = rng.standard_normal(dims)
    out: Floats = norm * w / np.linalg.norm(w)
    return out


def _binary(name: str, desc: str, x: Floats, y: npt.NDArray[np.int64]) -> Stream:
    return Stream(name, desc, x.astype(np.float32), y, 2)


def _unscaled(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    scale = np.array([1e4, 1e-3, 1.0, 5e2, 1e-2, 3e5, 0.1, 10.0])
    offset = np.array([5e4, 0.0, 0.0, 1e3, 0.5, 1e6, 0.0, 0.0])
    z = rng.standard_normal((samples, 8))
    y = _bernoulli(rng, z @ _direction(rng, 8, 4.0))
    desc = "8 features sized 1e-3 .. 3e5 (offsets to 1e6), logistic in the standardised values"
    return _binary("unscaled", desc, offset + scale * z, y)


def _heavy_tail(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(1.5, (samples, 10))
    y = _bernoulli(rng, x @ _direction(rng, 10, 3.0))
    desc = "10 Student-t(1.5) features (infinite variance), logistic in the raw values"
    return _binary("heavy_tail", desc, x, y)


def _rare_positive(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 10))
    score = x @ _direction(rng, 10, 2.0)
    # the intercept that gives ~1% positives for this direction (score ~ N(0, 4))
    y = _bernoulli(rng, score - 6.6)
    desc = "10 Gaussian features, ~1% positives (logistic, intercept -6.6)"
    return _binary("rare_positive", desc, x, y)


FIELDS, BUCKETS = 8, 32


def _hashed_ids(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.3, (samples, FIELDS)) % 1_000_003  # long tail: most IDs seen once
    effect_seed = rng.integers(1 << 31)

    def effect(field: int, ident: npt.NDArray[np.int64]) -> Floats:
        # a fixed N(0, 1) effect per (field, ID): reproducible without a table of every ID
        mixed = (ident * 2_654_435_761 + field * 97 + int(effect_seed)) % (1 << 32)
        return _normal_quantile(mixed / float(1 << 32))

    logits = sum(effect(f, ids[:, f]) for f in range(FIELDS))
    y = _bernoulli(rng, np.asarray(logits))
    x = np.zeros((samples, FIELDS * BUCKETS))
    rows = np.arange(samples)
    for f in range(FIELDS):
        x[rows, f * BUCKETS + (ids[:, f] * 40_503 + f) % BUCKETS] = 1.0
    desc = f"{FIELDS} Zipf(1.3) ID fields hashed to {BUCKETS} one-hot buckets each, N(0,1) per ID"
    return _binary("hashed_ids", desc, x, y)


def _normal_quantile(u: Floats) -> Floats:
    """The standard normal quantile of each u in (0, 1) (no scipy needed)."""
    from statistics import NormalDist

    quantile = NormalDist().inv_cdf
    clipped = np.clip(u, 1e-9, 1 - 1e-9)
    return np.array([quantile(v) for v in clipped.ravel()]).reshape(u.shape)


def _noisy_drift(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 10))
    a, b, c = (_direction(rng, 10, 1.0) for _ in range(3))
    t = np.arange(samples) / samples
    turn = np.clip((t - 2 / 3) * 3, 0, 1)[:, None]  # 0 before the last third, then 0 -> 1
    w = np.where(t[:, None] < 1 / 3, a, (1 - turn) * b + turn * c)
    y = ((x * w).sum(axis=1) > 0).astype(np.int64)
    flip = rng.random(samples) < 0.15
    y[flip] = 1 - y[flip]
    desc = "10 features, 15% label noise, concept a -> b at 1/3, b turning to c over the last 1/3"
    return _binary("noisy_drift", desc, x, y)


def _outlier_target(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 8))
    y = 10.0 + x @ _direction(rng, 8, 3.0) + rng.standard_normal(samples)
    gross = rng.random(samples) < 0.03
    y[gross] += rng.choice([-1.0, 1.0], int(gross.sum())) * rng.uniform(100, 500, int(gross.sum()))
    desc = "8 features, y = 10 + w.x + N(0,1), 3% of targets off by 100..500"
    return Stream("outlier_target", desc, x.astype(np.float32), y.astype(np.float32), 0)


def _needle(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 200))
    y = _bernoulli(rng, 3.0 * (x[:, 0] - x[:, 1]))
    desc = "200 Gaussian features, label logistic in 3 (x0 - x1): 2 of 200 matter"
    return _binary("needle", desc, x, y)


def _counts(samples: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    means = np.geomspace(0.2, 1000.0, 12)
    x = rng.negative_binomial(1.0, 1.0 / (1.0 + means), (samples, 12)).astype(np.float64)
    scaled = (x - means) / np.sqrt(means + means**2)  # the negative binomial's own sd
    y = _bernoulli(rng, scaled @ _direction(rng, 12, 3.0))
    desc = "12 negative-binomial counts, means 0.2 .. 1,000 (many zeros), logistic in the raw"
    return _binary("counts", desc, x, y)


HARD: dict[str, Callable[[int, int], Stream]] = {
    "unscaled": _unscaled,
    "heavy_tail": _heavy_tail,
    "rare_positive": _rare_positive,
    "hashed_ids": _hashed_ids,
    "noisy_drift": _noisy_drift,
    "outlier_target": _outlier_target,
    "needle": _needle,
    "counts": _counts,
}


def build_hard_stream(name: str, samples: int = 4000, seed: int = 7) -> Stream:
    return HARD[name](samples, seed)
