"""Move a decoded batch onto the training device.

On CUDA the host arrays are copied into pinned (page-locked) memory and sent with
``non_blocking=True``, so the copy overlaps the work already queued on the GPU; PyTorch's
caching host allocator keeps the pinned block alive until the copy has finished. On CPU the
tensors share memory with the numpy arrays (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamtrain.sample.batch import Batch
from streamtrain.sample.sparse_torch import JaggedTensor, to_tensors


@dataclass(frozen=True)
class DeviceBatch:
    """A batch's tensors on one device; timestamps stay on the host (metrics only).

    >>> import numpy as np
    >>> b = Batch(np.ones((2, 3), np.float32), np.array([0, 1]), np.ones(2, np.float32),
    ...           np.zeros(2), {0: 2}, 2)
    >>> to_device(b, torch.device("cpu")).features.shape
    torch.Size([2, 3])
    """

    features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    timestamps: np.ndarray
    size: int
    sparse: dict[str, JaggedTensor] | None = None


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # torch.from_numpy needs a writable, contiguous array; bulk-decoded arrays may be neither.
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()
    host = torch.from_numpy(array)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    if device.type == "cpu":
        return host
    return host.to(device)


def to_device(batch: Batch, device: torch.device | str) -> DeviceBatch:
    """Tensors of ``batch`` on ``device`` (pinned + non-blocking on CUDA)."""
    target = torch.device(device)
    return DeviceBatch(
        features=_tensor(batch.features, target),
        labels=_tensor(batch.labels, target),
        weights=_tensor(batch.weights, target),
        timestamps=batch.timestamps,
        size=batch.size,
        sparse=None if batch.sparse is None else to_tensors(batch.sparse, target),
    )
