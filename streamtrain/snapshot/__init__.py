"""Weight snapshots: safetensors + manifest, published in chunks to Kafka, verified on receipt.

The topic layout is described in ``docs/snapshots.md``. The trainer uses
:class:`SnapshotPublisher`; the server uses :class:`SnapshotSubscriber`.
"""

from streamtrain.snapshot.manifest import SnapshotManifest, TensorInfo, settings_hash
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot, RejectReason

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
