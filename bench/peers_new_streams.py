"""Streams the defaults were *not* chosen on (issue 30): held out to check the `auto` default.

Six public generators from river, at settings none of the suite's streams use, fed raw:

* ``led_drift``: LEDDrift with 7 drifting segments throughout and 10% noise (the issue's
  "LED with drifting features" case);
* ``hyperplane_fast``: a 30-feature hyperplane rotating 10x faster than ``hyperplane``;
* ``sine_abrupt``: river's Sine, function 0 -> 2 at mid-stream (a non-linear boundary);
* ``waveform``: three waveform classes from 21 noisy features plus 19 irrelevant ones;
* ``agrawal_drift``: Agrawal, function 2 -> 5 at mid-stream, perturbed 5%;
* ``mv``: river's Mv regression (mixed nominal/numeric, a piecewise target);
* ``planes2d``: river's Planes2D regression (piecewise linear, 10 features).

>>> stream = build_new_stream("sine_abrupt", samples=50)
>>> stream.features.shape, stream.task
((50, 2), 'binary')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from peers_streams import (
    Stream,
    collect,
    collect_raw,
    encode_agrawal,
    function_switch,
    raw_values,
    regression,
)


def _led_drift(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.LEDDrift(
        seed=seed, noise_percentage=0.1, irrelevant_features=True, n_drift_features=7
    )
    x, y = collect(gen, samples, raw_values)
    desc = "river LEDDrift throughout (7 segments swapped), 24 binary features, 10% noise"
    return Stream("led_drift", desc, x, y, 10)


def _hyperplane_fast(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.Hyperplane(
        seed=seed, n_features=30, n_drift_features=10, mag_change=0.01, noise_percentage=0.05
    )
    x, y = collect(gen, samples, raw_values)
    desc = "river Hyperplane, 30 features, 10 rotating at mag_change 0.01 (10x), 5% noise"
    return Stream("hyperplane_fast", desc, x, y, 2)


def _sine_abrupt(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    desc = "river Sine function 0 (below sin) -> 2 (below 0.5 + 0.3 sin 3pi x) at mid-stream"
    return function_switch("sine_abrupt", desc, synth.Sine, (0, 2), samples, seed, 2)


def _waveform(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    x, y = collect(synth.Waveform(seed=seed, has_noise=True), samples, raw_values)
    desc = "river Waveform with noise: 3 classes, 21 noisy + 19 irrelevant features"
    return Stream("waveform", desc, x, y, 3)


def _agrawal_drift(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    desc = "river Agrawal function 2 -> 5 at mid-stream, 5% perturbation, raw salary ~1e5"
    return function_switch(
        "agrawal_drift",
        desc,
        synth.Agrawal,
        (2, 5),
        samples,
        seed,
        2,
        encode=encode_agrawal,
        perturbation=0.05,
    )


_MV_CODES = {"red": 0.0, "green": 1.0, "brown": 2.0, "no": 0.0, "yes": 1.0}
_MV_CODES |= {"normal": 0.0, "large": 1.0}


def _encode_mv(row: Mapping[Any, Any]) -> list[float]:
    """x3 (red/green/brown) one-hot, x7 (yes/no) and x8 (normal/large) as 0/1, the rest raw."""
    values: list[float] = []
    for key, value in row.items():
        if key == 3:
            values += [float(value == colour) for colour in ("red", "green", "brown")]
        else:
            values.append(_MV_CODES[value] if isinstance(value, str) else float(value))
    return values


def _mv(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    x, y = collect_raw(synth.Mv(seed=seed), samples, _encode_mv)
    desc = "river Mv: 10 features (x3 one-hot, x7/x8 as 0/1, numeric raw), piecewise target"
    return regression("mv", desc, x, y)


def _planes2d(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    x, y = collect_raw(synth.Planes2D(seed=seed), samples, raw_values)
    desc = "river Planes2D: 10 features, one of two planes chosen by x0, noise"
    return regression("planes2d", desc, x, y)


NEW: dict[str, Callable[[int, int], Stream]] = {
    "led_drift": _led_drift,
    "hyperplane_fast": _hyperplane_fast,
    "sine_abrupt": _sine_abrupt,
    "waveform": _waveform,
    "agrawal_drift": _agrawal_drift,
    "mv": _mv,
    "planes2d": _planes2d,
}
NEW_SIZES: dict[str, int] = {name: 10_000 for name in NEW}


def build_new_stream(name: str, samples: int | None = None, seed: int = 7) -> Stream:
    return NEW[name](NEW_SIZES[name] if samples is None else samples, seed)
