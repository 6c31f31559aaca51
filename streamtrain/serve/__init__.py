"""Serving: a weight slot hot-swapped from the snapshot topic, behind the Open Inference Protocol.

``build_worker(settings).run()`` is what ``streamtrain serve`` does; the pieces compose:
:class:`WeightSlot` (live/standby weights), an engine (:class:`DirectEngine` or
:class:`BatchingEngine`), :class:`SnapshotWatcher` (topic → slot), :class:`ServedModel` (the
data plane REST and gRPC share) and :func:`create_app` (its REST routes). ``weights/`` holds
the hot-swap path, ``protocol/`` the request path, ``prediction_log/`` the log of what was
served, ``server.py`` the wiring.
"""

from streamtrain.serve.protocol.bodies import ModelIO, ProtocolError
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.rest import create_app
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, Engine, Prediction
from streamtrain.serve.weights.slot import NotReady, SnapshotRejected, StandbyBusy, WeightSlot
from streamtrain.serve.weights.watcher import SnapshotSource, SnapshotWatcher

__all__ = [
    "BatchingEngine",
    "DirectEngine",
    "Engine",
    "ModelIO",
    "NotReady",
    "Prediction",
    "ProtocolError",
    "ServedModel",
    "SnapshotRejected",
    "SnapshotSource",
    "SnapshotWatcher",
    "StandbyBusy",
    "WeightSlot",
    "create_app",
]
