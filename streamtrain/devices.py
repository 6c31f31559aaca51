"""Turn a device setting (``auto | cpu | cuda[:N]``) into a torch device, with clear errors."""

from __future__ import annotations

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
