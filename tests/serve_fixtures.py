"""The serving pieces tests build again and again, built once: a served model over a slot,
its ASGI app, and a running worker whose watcher has no snapshots to offer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.prediction_log.writer import PredictionLog
from streamtrain.serve.protocol.bodies import ModelIO
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.rest import create_app
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.weights.inference import DirectEngine, Engine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import NoSnapshots, SnapshotWatcher
from streamtrain.snapshot.manifest import SnapshotHeader


def served_model(
    slot: WeightSlot,
    spec: SampleSpec,
    name: str,
    *,
    engine: Engine | None = None,
    prediction_log: PredictionLog | None = None,
) -> ServedModel:
    """``slot`` behind a direct engine on the CPU (or ``engine``), as the model ``name``."""
    return ServedModel(
        slot=slot,
        engine=engine or DirectEngine(slot, head_for(spec), torch.device("cpu")),
        io=ModelIO.for_spec(spec),
        name=name,
        prediction_log=prediction_log,
    )


def app_for(
    served: ServedModel,
    *,
    max_body_bytes: int = 1 << 20,
    metrics_registry: CollectorRegistry | None = None,
) -> Starlette:
    return create_app(
        served=served, max_body_bytes=max_body_bytes, metrics_registry=metrics_registry
    )


@contextmanager
def running_worker(served: ServedModel, app: Starlette | None = None) -> Iterator[ServingWorker]:
    """A worker on a free local port serving ``app`` (by default ``app_for(served)``) and
    only the weights the slot already holds; stopped on exit."""
    worker = ServingWorker(
        app=app if app is not None else app_for(served),
        served=served,
        watcher=SnapshotWatcher(NoSnapshots(), served.slot),
        host="127.0.0.1",
        port=0,
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def tiny_regression_worker() -> Iterator[ServingWorker]:
    """A worker serving model ``m``: y = x0 + x1 + 0.5, version 1 (for tests of the HTTP layer)."""
    slot = WeightSlot(torch.nn.Linear(2, 1))
    slot.load(
        {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5])}, SnapshotHeader(1, "r")
    )
    with running_worker(served_model(slot, SampleSpec((2,), "regression"), "m")) as running:
        yield running


def raw_exchange(port: int, request: bytes) -> bytes:
    """``request`` sent as raw bytes to a local port; everything sent back before the server
    closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer
