"""Turn a device setting (``auto | cpu | cuda[:N]``) into a torch device, with clear errors."""

from __future__ import annotations

import os

import torch


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {setting!r} requested but CUDA is not available "
                "(install a CUDA build of torch, or use device 'auto' or 'cpu')"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {setting!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device


def training_threads() -> int:
    """torch intra-op threads for the trainer when ``train.torch_threads`` is unset: every core
    this process may run on but one. The prefetch thread and the Kafka client fetch and decode
    the next batches while the step runs; OpenMP threads that have to share their core spin
    at each barrier and stall the step (profiled in bench/README.md, "Train").

    >>> training_threads() >= 1
    True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)
