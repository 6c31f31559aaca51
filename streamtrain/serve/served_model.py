"""The one served model as both front ends see it: the REST routes and the gRPC service share
this object, so both check names and versions, run the engine and count requests the same way.

>>> import torch
>>> from streamtrain.serve.inference import DirectEngine, head_for
>>> from streamtrain.serve.protocol import ModelIO
>>> from streamtrain.serve.slot import WeightSlot
>>> from streamtrain.spec import SampleSpec
>>> spec = SampleSpec((2,), "regression")
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> served = ServedModel(
...     slot=slot, engine=DirectEngine(slot, head_for(spec), torch.device("cpu")),
...     io=ModelIO.for_spec(spec), name="demo",
... )
>>> served.live_version("other", None)
Traceback (most recent call last):
...
streamtrain.serve.protocol.ProtocolError: unknown model 'other'; this server serves 'demo'
"""

from __future__ import annotations

import time
from typing import Any

from streamtrain.metrics import SERVE_REQUEST_SECONDS, SERVE_REQUESTS
from streamtrain.serve.inference import Array, Engine, Prediction
from streamtrain.serve.protocol import ModelIO, ProtocolError
from streamtrain.serve.slot import NotReady, WeightSlot

OUTCOMES = (
    "ok",
    "bad_request",
    "too_large",
    "not_found",
    "not_ready",
    "client_disconnected",
    "error",
)
PLATFORM = "pytorch"


class ServedModel:
    """Slot, engine and tensor description of the served model, and its request accounting."""

    def __init__(self, *, slot: WeightSlot, engine: Engine, io: ModelIO, name: str) -> None:
        self.slot = slot
        self.engine = engine
        self.io = io
        self.name = name
        # Children resolved once: ``labels()`` per request would take the family's lock.
        self._counted = {outcome: SERVE_REQUESTS.labels(outcome) for outcome in OUTCOMES}

    def live_version(self, name: str, version: str | None) -> str:
        """The live version; ProtocolError for an unknown model, no weights yet, or a version
        that is not the live one. An empty ``version`` (gRPC's default) means the live one."""
        if name != self.name:
            raise ProtocolError(
                f"unknown model {name!r}; this server serves {self.name!r}", 404, "not_found"
            )
        info = self.slot.info
        if info is None:
            raise ProtocolError(
                "model not ready: waiting for the first valid weight snapshot", 503, "not_ready"
            )
        live = str(info.version)
        if version and version != live:
            raise ProtocolError(
                f"model {name!r} version {version!r} is not loaded; the live version is "
                f"{live} (omit the version to use the live one)",
                404,
                "not_found",
            )
        return live

    async def predict(self, features: Array, version: str | None) -> Prediction:
        """Run ``features`` on the live weights; a request for a named version that was
        replaced while it waited is refused rather than answered by other weights."""
        try:
            prediction = await self.engine.infer(features)
        except NotReady as exc:
            raise ProtocolError(str(exc), 503, "not_ready") from exc
        live = str(prediction.info.version)
        if version and version != live:
            raise ProtocolError(
                f"version {version!r} was replaced by {live} during the request; retry, "
                "or omit the version to use the live one",
                404,
                "not_found",
            )
        return prediction

    def record(self, outcome: str, started: float) -> None:
        """Count one infer request by outcome and observe its latency since ``started``
        (a ``time.perf_counter()`` reading)."""
        self._counted[outcome].inc()
        SERVE_REQUEST_SECONDS.observe(time.perf_counter() - started)

    def metadata(self, live: str) -> dict[str, Any]:
        """The OIP model metadata document (REST JSON; the gRPC reply carries the same)."""
        return {
            "name": self.name,
            "versions": [live],
            "platform": PLATFORM,
            "inputs": [self.io.input.to_json()],
            "outputs": [o.to_json() for o in self.io.outputs],
        }
