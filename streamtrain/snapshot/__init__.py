"""Weight snapshots: safetensors + manifest, published in chunks to Kafka, verified on receipt.

The topic layout is described in ``docs/snapshots.md``. The trainer uses
:class:`SnapshotPublisher`; the server uses :class:`SnapshotSubscriber`.

The publisher, subscriber and verifier need torch, so they are imported when first named
(PEP 562): commands that only sign keys or read a manifest (``streamtrain demo``'s parent,
``keys``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamtrain.snapshot.manifest import SnapshotManifest, TensorInfo, settings_hash

if TYPE_CHECKING:
    from streamtrain.snapshot.publisher import SnapshotPublisher
    from streamtrain.snapshot.subscriber import SnapshotSubscriber
    from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot, RejectReason

_LAZY = {
    "SnapshotPublisher": "streamtrain.snapshot.publisher",
    "SnapshotSubscriber": "streamtrain.snapshot.subscriber",
    "ReceivedSnapshot": "streamtrain.snapshot.verify",
    "RejectedSnapshot": "streamtrain.snapshot.verify",
    "RejectReason": "streamtrain.snapshot.verify",
}

__all__ = [
    "ReceivedSnapshot",
    "RejectReason",
    "RejectedSnapshot",
    "SnapshotManifest",
    "SnapshotPublisher",
    "SnapshotSubscriber",
    "TensorInfo",
    "settings_hash",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
