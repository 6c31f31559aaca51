"""Named sample streams for the demo, the tests and the benchmarks, each with its SampleSpec.

One module a kind, in the manner of River's ``datasets/base.py`` + ``synth/``: ``base.py``
(the types every dataset shares), ``synth.py`` (hyperplane), ``digits.py``, ``ctr.py``,
``file.py`` (JSON lines); this module names them.

* ``hyperplane`` / ``hyperplane-multiclass``: synthetic rotating-hyperplane classification in
  16 dimensions (2 / 4 classes), seeded, with an abrupt concept change at ``drift_at`` and
  optional gradual rotation. A linear model reaches > 90% accuracy and recovers after drift.
* ``digits``: scikit-learn's 8x8 digit images as ``(1, 8, 8)`` floats in [0, 1], 10 classes,
  reshuffled every pass (needs ``pip install 'streamtrain[datasets]'``).
* ``ctr``: a click stream of user and item IDs (sparse features) with Zipf popularity, new
  items and shifting tastes (:mod:`streamtrain.datasets.ctr`).
* a JSON-lines file (:func:`jsonl`): one JSON sample per line, replayed in a cycle.

>>> info = DATASETS["hyperplane"]
>>> chunk = next(info.iterate(count=5, seed=1))
>>> chunk.features.shape, chunk.labels.dtype.name, info.spec.task
((5, 16), 'int64', 'binary')
"""

from __future__ import annotations

from streamtrain.datasets.base import DatasetError, DatasetInfo, SampleChunk
from streamtrain.datasets.ctr import ctr, ctr_spec
from streamtrain.datasets.digits import digits
from streamtrain.datasets.file import jsonl
from streamtrain.datasets.synth import hyperplane

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        hyperplane(num_classes=2),
        hyperplane(num_classes=4),
        digits(),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    """The dataset called ``name``; the error lists the valid names."""
    if name == "ctr":
        return ctr()
    try:
        return DATASETS[name]
    except KeyError:
        valid = ", ".join([*DATASETS, "ctr", "file (with --file)"])
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {valid}") from None


__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "SampleChunk",
    "ctr",
    "ctr_spec",
    "get_dataset",
    "hyperplane",
    "jsonl",
]
