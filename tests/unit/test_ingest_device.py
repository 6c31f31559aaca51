from __future__ import annotations

import numpy as np
import torch

from streamtrain.ingest.device import to_device
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary, encode_binary_many


def _batch() -> Batch:
    spec = SampleSpec(feature_shape=(3,), task="multiclass", num_classes=4)
    values = encode_binary_many(spec, np.arange(6).reshape(2, 3), np.array([1, 3]))
    d = decode_binary(spec, values, np.zeros(2))
    return Batch(d.features, d.labels, d.weights, d.timestamps, {0: 2}, 2)


def test_cpu_tensors_have_the_batch_values_and_dtypes() -> None:
    out = to_device(_batch(), "cpu")
    assert out.features.dtype == torch.float32 and out.labels.dtype == torch.int64
    assert out.features.tolist() == [[0, 1, 2], [3, 4, 5]] and out.labels.tolist() == [1, 3]
    assert out.size == 2
