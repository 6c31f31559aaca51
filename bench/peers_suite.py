"""The broad suite: the five classic peers streams plus thirteen more, none tuned for.

The thirteen added streams reach streamtrain as a user's records would: raw values, no
encoding by hand (river's StandardScaler and streamtrain's online standardiser are what cope
with the scales). They cover binary and multiclass classification and regression, abrupt and
gradual drift, 442 to 50k samples, features from 1e-3 to 7e5 (a date ordinal), targets from
about 5 to 370, and a sensor that reads a constant for 40% of the stream before it moves.
Everything is bundled with river or scikit-learn: no network.

>>> stream = build_stream("stagger_abrupt", samples=100)
>>> stream.features.shape, stream.task
((100, 3), 'binary')
>>> build_stream("trump_approval", samples=10_000).size  # a bundled set: at most its length
1001
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from peers_new_streams import NEW, NEW_SIZES
from peers_streams import (
    CLASSIC,
    Stream,
    abrupt,
    collect,
    collect_raw,
    function_switch,
    raw_values,
    regression,
)


def _bananas(samples: int, seed: int) -> Stream:
    from river.datasets import Bananas

    x, y = collect(Bananas(), min(samples, 5300), raw_values)
    return Stream("bananas", "river Bananas (bundled), 2 features, published order", x, y, 2)


def _image_segments(samples: int, seed: int) -> Stream:
    from river.datasets import ImageSegments

    x, raw = collect_raw(ImageSegments(), min(samples, 2310), raw_values)
    classes = sorted(set(raw))
    y = np.asarray([classes.index(v) for v in raw], np.int64)
    desc = "river ImageSegments (bundled), 18 raw features from 0.0 to ~250, 7 classes"
    return Stream("image_segments", desc, x, y, len(classes))


def _trump_approval(samples: int, seed: int) -> Stream:
    from river.datasets import TrumpApproval

    x, y = collect_raw(TrumpApproval(), min(samples, 1001), raw_values)
    desc = "river TrumpApproval (bundled): raw date ordinal ~736,400 + 5 polls; target ~40"
    return regression("trump_approval", desc, x, y)


def _chick_weights(samples: int, seed: int) -> Stream:
    from river.datasets import ChickWeights

    x, y = collect_raw(ChickWeights(), min(samples, 578), raw_values)
    desc = "river ChickWeights (bundled): time, chick id, diet; weight 35 to 373 g"
    return regression("chick_weights", desc, x, y)


def _shuffled_passes(
    x: npt.NDArray[Any], y: npt.NDArray[Any], samples: int, seed: int
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], int]:
    """A small table as a stream: shuffled passes (it has no order of its own)."""
    rng = np.random.default_rng(seed)
    passes = -(-samples // len(y))
    order = np.concatenate([rng.permutation(len(y)) for _ in range(passes)])[:samples]
    return x[order], y[order], passes


def _breast_cancer(samples: int, seed: int) -> Stream:
    from sklearn.datasets import load_breast_cancer

    features, target = load_breast_cancer(return_X_y=True)
    x, y, _ = _shuffled_passes(features, target, min(samples, len(target)), seed)
    desc = "scikit-learn breast cancer, 30 raw features from ~1e-3 to ~4,000, one shuffled pass"
    return Stream("breast_cancer", desc, x.astype(np.float32), y.astype(np.int64), 2)


def _wine(samples: int, seed: int) -> Stream:
    from sklearn.datasets import load_wine

    features, target = load_wine(return_X_y=True)
    x, y, passes = _shuffled_passes(features, target, samples, seed)
    desc = f"scikit-learn wine (178), 13 raw features (proline ~1,000), {passes} shuffled passes"
    return Stream("wine", desc, x.astype(np.float32), y.astype(np.int64), 3)


def _diabetes(samples: int, seed: int) -> Stream:
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True, scaled=False)
    x, y, _ = _shuffled_passes(features, target, min(samples, len(target)), seed)
    desc = "scikit-learn diabetes, 10 raw features, target 25 to 346, one shuffled pass"
    return Stream("diabetes", desc, x.astype(np.float32), y.astype(np.float32), 0)


def _rbf_drift(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.RandomRBFDrift(
        seed_model=seed,
        seed_sample=seed,
        n_classes=5,
        n_features=10,
        n_centroids=50,
        change_speed=0.001,
        n_drift_centroids=25,
    )
    x, y = collect(gen, samples, raw_values)
    desc = "river RandomRBFDrift, 10 features, 5 classes, half the centroids moving (gradual)"
    return Stream("rbf_drift", desc, x, y, 5)


def _led_abrupt(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = abrupt(
        synth.LED(seed=seed, noise_percentage=0.1, irrelevant_features=True),
        synth.LEDDrift(
            seed=seed + 1, noise_percentage=0.1, irrelevant_features=True, n_drift_features=7
        ),
        samples,
    )
    x, y = collect(gen, samples, raw_values)
    desc = "river LED -> LEDDrift (7 segments swapped) at mid-stream, 24 binary features, 10% noise"
    return Stream("led_abrupt", desc, x, y, 10)


def _stagger_abrupt(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    desc = "river STAGGER function 0 -> 2 at mid-stream, 3 categorical codes fed raw"
    return function_switch("stagger_abrupt", desc, synth.STAGGER, (0, 2), samples, seed, 2)


def _mixed_abrupt(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    desc = "river Mixed function 0 -> 1 (labels flipped) at mid-stream, 2 boolean + 2 numeric"
    return function_switch("mixed_abrupt", desc, synth.Mixed, (0, 1), samples, seed, 2)


def _friedman_drift(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.FriedmanDrift(
        drift_type="gra", position=(samples // 3, 2 * samples // 3), seed=seed
    )
    x, y = collect_raw(gen, samples, raw_values)
    desc = "river FriedmanDrift, global recurring gradual drift at 1/3 and 2/3, 10 features"
    return regression("friedman_drift", desc, x, y)


def _friedman_stuck(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    x, y = collect_raw(synth.Friedman(seed=seed), samples, raw_values)
    # x3 carries 10 * x3 of the target; its sensor reads a constant 0.5 until 40% in
    x[: int(samples * 0.4), 3] = 0.5
    desc = "river Friedman, feature 3 (weight 10) constant 0.5 for the first 40%, then live"
    return regression("friedman_stuck", desc, x, y)


SUITE: dict[str, Callable[[int, int], Stream]] = {
    "bananas": _bananas,
    "image_segments": _image_segments,
    "breast_cancer": _breast_cancer,
    "wine": _wine,
    "rbf_drift": _rbf_drift,
    "led_abrupt": _led_abrupt,
    "stagger_abrupt": _stagger_abrupt,
    "mixed_abrupt": _mixed_abrupt,
    "trump_approval": _trump_approval,
    "chick_weights": _chick_weights,
    "diabetes": _diabetes,
    "friedman_drift": _friedman_drift,
    "friedman_stuck": _friedman_stuck,
}
BUILDERS: dict[str, Callable[[int, int], Stream]] = {**CLASSIC, **SUITE, **NEW}

# samples per stream in the full run, sized so it fits in ~15 min on 2 shared cores; bundled
# sets are used whole (wine: 3 passes, digits: 3)
SIZES: dict[str, int] = {
    "hyperplane": 10_000,
    "sea_drift": 10_000,
    "agrawal": 10_000,
    "phishing": 1_250,
    "digits": 3 * 1797,
    "bananas": 5_300,
    "image_segments": 2_310,
    "breast_cancer": 569,
    "wine": 3 * 178,
    "rbf_drift": 10_000,
    "led_abrupt": 10_000,
    "stagger_abrupt": 5_000,
    "mixed_abrupt": 50_000,
    "trump_approval": 1_001,
    "chick_weights": 578,
    "diabetes": 442,
    "friedman_drift": 10_000,
    "friedman_stuck": 5_000,
    **NEW_SIZES,
}


def build_stream(name: str, samples: int | None = None, seed: int = 7) -> Stream:
    """The named stream with ``samples`` samples (its full-run size when None; bundled sets
    stop at their length)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown stream {name!r}; pick one of {', '.join(BUILDERS)}")
    n = SIZES[name] if samples is None else samples
    if n < 1:
        raise ValueError(f"samples must be >= 1, got {n}")
    return BUILDERS[name](n, seed)
