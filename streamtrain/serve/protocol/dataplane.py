"""The data plane: the one served model both front ends call, in the manner of KServe's
``DataPlane``. The REST routes and the gRPC service only decode a request and encode its
answer; :meth:`ServedModel.infer` runs everything between, once for both: model and version
check, request id, engine call, prediction-log hand-off, timing and request accounting.

>>> import torch
>>> from streamtrain.serve.weights.inference import DirectEngine, head_for
>>> from streamtrain.serve.protocol.bodies import ModelIO
>>> from streamtrain.serve.weights.slot import WeightSlot
>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec((2,), "regression")
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> served = ServedModel(
...     slot=slot, engine=DirectEngine(slot, head_for(spec), torch.device("cpu")),
...     io=ModelIO.for_spec(spec), name="demo",
... )
>>> served.live_version("other", None)
Traceback (most recent call last):
...
streamtrain.serve.protocol.bodies.ProtocolError: unknown model 'other'; this server serves 'demo'
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.metrics import SERVE_REQUEST_SECONDS, SERVE_REQUESTS
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.serve.prediction_log.rows import ServedBatch
from streamtrain.serve.prediction_log.writer import PredictionLog
from streamtrain.serve.protocol.bodies import InferRequest, ModelIO, ProtocolError
from streamtrain.serve.protocol.request_ids import request_id_for
from streamtrain.serve.protocol.split import Shadows, TrafficSplit
from streamtrain.serve.protocol.statistics import InferenceStatistics
from streamtrain.serve.weights.inference import Array, Engine, Prediction
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import NotReady, WeightSlot
from streamtrain.wire.prediction_record import Arm

log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply")

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
# ``model_repository`` is not claimed: the index is served, load and unload are not.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
_CONFIG_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}


def load_unload_refused(action: str, name: str) -> str:
    """The answer to a repository ``load`` or ``unload`` of model ``name``, whatever its name:
    REST says it with a 400, gRPC with ``UNIMPLEMENTED`` (REST answered a 404 "no route",
    which reads as an unknown model, while gRPC said the call is not implemented)."""
    return (
        f"model {action} is not supported: this server serves the weights its trainer publishes "
        f"on the snapshot topic, and model '{name}' is not {action}ed by request (pin a retained "
        "version with POST /v2/admin/pin)"
    )


def server_metadata() -> dict[str, Any]:
    """The OIP server metadata document, the same over REST and gRPC."""
    return {"name": "streamtrain", "version": _package_version(), "extensions": EXTENSIONS}


def _package_version() -> str:
    try:
        return importlib.metadata.version("streamtrain")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Timing(NamedTuple):
    """Where an answered request spent its time (``perf_counter_ns`` differences).

    One rule for both transports: ``input_ns`` runs from the request's start (when the
    transport handed it to :meth:`ServedModel.infer`, before the model check and before a
    REST body is read) to the engine call, so it covers receiving, decoding and checking the
    input; ``infer_ns`` is the engine call; ``output_ns`` encoding the answer and handing it
    to the prediction log.
    """

    rows: int
    input_ns: int
    infer_ns: int
    output_ns: int


class ServedModel:
    """Slot, engine and tensor description of the served model, and its request accounting."""

    def __init__(
        self,
        *,
        slot: WeightSlot,
        engine: Engine,
        io: ModelIO,
        name: str,
        retained: RetainedVersions | None = None,
        prediction_log: PredictionLog | None = None,
        split: TrafficSplit | None = None,
    ) -> None:
        self.slot = slot
        self.retained = retained
        self.prediction_log = prediction_log
        self.split = split if split is not None else TrafficSplit(None, retained)
        self.shadows = Shadows()
        # The output a log record keeps per row: class probabilities, or the regression value.
        self._logged_output = io.outputs[0].name
        self.engine = engine
        self.io = io
        self.name = name
        # Children resolved once: ``labels()`` per request would take the family's lock.
        self._counted = {outcome: SERVE_REQUESTS.labels(outcome) for outcome in OUTCOMES}
        # Room for every version that can be loaded at once (retained, live, pinned) and more.
        self.stats = InferenceStatistics(keep=(0 if retained is None else retained.keep) + 8)

    def live_version(self, name: str, version: str | None) -> int:
        """The live version; ProtocolError for an unknown model, no weights yet, or a version
        that is neither live nor retained. An empty ``version`` (gRPC's default) means the
        live one."""
        if name != self.name:
            raise ProtocolError(
                f"unknown model {name!r}; this server serves {self.name!r}", 404, "not_found"
            )
        info = self.slot.info
        if info is None:
            raise ProtocolError(
                "model not ready: waiting for the first valid weight snapshot", 503, "not_ready"
            )
        live = info.version
        wanted = version_number(version)
        if version and (
            wanted is None or (wanted != live and not (self.retained and self.retained.has(wanted)))
        ):
            others = [str(v) for v in self.loaded_versions()[1:]]
            raise ProtocolError(
                f"model {name!r} version {version!r} is not loaded; the live version is {live}"
                + (f", also retained: {', '.join(others)}" if others else "")
                + " (omit the version to use the live one)",
                404,
                "not_found",
            )
        return live

    async def predict(
        self, features: Array, version: int | None, sparse: SparseRows | None = None
    ) -> Prediction:
        """Run ``features`` on the live weights, or on retained ``version`` when that is not
        the live one; a named version that went away while the request waited is refused
        rather than answered by other weights."""
        info = self.slot.info
        if (
            version is not None
            and self.retained is not None
            and (info is None or info.version != version)
        ):
            retained = await self.retained.infer(version, features, sparse)
            if retained is not None:
                return retained
        try:
            prediction = await self.engine.infer(features, sparse)
        except NotReady as exc:
            raise ProtocolError(str(exc), 503, "not_ready") from exc
        live = prediction.info.version
        if version is not None and version != live:
            retained = (
                None
                if self.retained is None
                else await self.retained.infer(version, features, sparse)
            )
            if retained is not None:
                return retained
            raise ProtocolError(
                f"version '{version}' was replaced by {live} during the request; retry, "
                "or omit the version to use the live one",
                404,
                "not_found",
            )
        return prediction

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[], Awaitable[InferRequest]],
        encode: Callable[[str, InferRequest, Mapping[str, Array]], _Reply],
    ) -> _Reply:
        """The one infer sequence: check the model, ``decode`` the request, run it, ``encode``
        the answer for the version that computed it, log it, count it once with its timing.

        Every failure is a ProtocolError whose ``status``/``outcome`` the transport reports
        as it is; an unexpected one is logged here and becomes a 500 (outcome ``error``).
        """
        started = time.perf_counter_ns()
        wanted: int | None = None
        try:
            self.live_version(name, version)
            wanted = version_number(version)
            request = self.identify(await decode())
            infer_start = time.perf_counter_ns()
            prediction, arm, shadow = await self.answer(request, wanted)
            output_start = time.perf_counter_ns()
            wanted = prediction.info.version
            reply = encode(str(wanted), request, prediction.outputs)
            self.log(request, prediction, arm)
            if shadow is not None and self.retained is not None:
                self.shadows.start(self.retained, shadow, request, self.log)
            timing = Timing(
                len(request.features),
                infer_start - started,
                output_start - infer_start,
                time.perf_counter_ns() - output_start,
            )
        except ProtocolError as exc:
            self.record(exc.outcome, started, wanted)
            raise
        except Exception:
            log.exception("inference failed")
            self.record("error", started, wanted)
            raise ProtocolError(
                "internal error during inference; see the server log", 500, "error"
            ) from None
        self.record("ok", started, wanted, timing)
        return reply

    async def answer(
        self, request: InferRequest, wanted: int | None
    ) -> tuple[Prediction, Arm, int | None]:
        """The prediction that answers ``request``, its arm (``live`` or ``candidate``), and
        the candidate version to compute in shadow (None: none). A request naming a version
        is not routed; a candidate evicted since it was routed to leaves it to the live one."""
        if wanted is None:
            arm, candidate = self.split.route(request.id, None)
            if arm == "candidate" and candidate is not None and self.retained is not None:
                answered = await self.retained.infer(candidate, request.features, request.sparse)
                if answered is not None:
                    return answered, arm, None
            if arm == "shadow":  # answered live; the candidate computes after the answer
                return await self.predict(request.features, None, request.sparse), "live", candidate
        return await self.predict(request.features, wanted, request.sparse), "live", None

    def identify(self, request: InferRequest) -> InferRequest:
        """``request`` with the id it is answered and logged under: with the prediction log on,
        the client's id once checked (ProtocolError 400 when the log cannot key it), else a
        generated one; with the log off, the client's id untouched."""
        if self.prediction_log is None:
            return request
        request_id = request_id_for(request.id, len(request.features))
        return request if request_id == request.id else dataclasses.replace(request, id=request_id)

    def log(self, request: InferRequest, prediction: Prediction, arm: Arm = "live") -> None:
        """Hand an answered request to the prediction log (if on); never blocks or raises."""
        if self.prediction_log is None or request.id is None:
            return
        info = prediction.info
        self.prediction_log.submit(
            ServedBatch(
                request.id,
                time.time(),
                info.version,
                info.run_id,
                request.features,
                prediction.outputs[self._logged_output],
                request.sparse,
                arm,
            )
        )

    def record(
        self,
        outcome: str,
        started_ns: int,
        version: int | None = None,
        timing: Timing | None = None,
    ) -> None:
        """Count one infer request by outcome, observe its latency since ``started_ns`` (a
        ``time.perf_counter_ns()`` reading) and add it to the statistics of ``version`` (of
        the live version when a failure came before any was chosen)."""
        total_ns = time.perf_counter_ns() - started_ns
        self._counted[outcome].inc()
        SERVE_REQUEST_SECONDS.observe(total_ns / 1e9)
        if version is None:
            info = self.slot.info
            version = info.version if info is not None else None
        if version is None:
            return
        if outcome == "ok" and timing is not None:
            self.stats.success(
                version,
                rows=timing.rows,
                input_ns=timing.input_ns,
                infer_ns=timing.infer_ns,
                output_ns=timing.output_ns,
                total_ns=total_ns,
            )
        elif outcome not in ("not_found", "client_disconnected"):
            self.stats.failure(version, total_ns)

    def loaded_versions(self) -> list[int]:
        """The versions this server can answer with: the live one first, then the other
        retained ones, newest first."""
        info = self.slot.info
        live = [] if info is None else [info.version]
        others = [] if self.retained is None else self.retained.versions()
        return live + [v for v in others if v not in live]

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics document for the model (all loaded versions, or one)."""
        if name is not None and name != "":
            self.live_version(name, version)
        wanted = version_number(version)
        if version and wanted is None:
            return {"model_stats": []}  # no version of that name, and no model named to check
        return {"model_stats": self.stats.to_json(self.name, wanted, self.loaded_versions())}

    def config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (JSON form of ``model_config.proto``). The first
        dimension is the request's row count, so ``max_batch_size`` is 0 and dims keep -1."""
        self.live_version(name, version)
        return {
            "name": self.name,
            "platform": PLATFORM,
            "backend": PLATFORM,
            "max_batch_size": 0,
            "input": [_config_tensor(t.name, t.datatype, t.shape) for t in self.io.inputs],
            "output": [_config_tensor(o.name, o.datatype, o.shape) for o in self.io.outputs],
            "version_policy": {"latest": {"num_versions": len(self.loaded_versions()) or 1}},
        }

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """The repository index: one entry per loaded version, or the model still loading."""
        versions = self.loaded_versions()
        if not versions:
            if ready_only:
                return []
            return [
                {
                    "name": self.name,
                    "version": "",
                    "state": "LOADING",
                    "reason": "waiting for the first valid weight snapshot",
                }
            ]
        return [
            {"name": self.name, "version": str(v), "state": "READY", "reason": ""} for v in versions
        ]

    def metadata(self, live: int) -> dict[str, Any]:
        """The OIP model metadata document (REST JSON; the gRPC reply carries the same, but
        for ``traffic_split``, present while a split or shadow is set, which it cannot)."""
        document: dict[str, Any] = {
            "name": self.name,
            "versions": [str(v) for v in self.loaded_versions() or [live]],
            "platform": PLATFORM,
            "inputs": [tensor.to_json() for tensor in self.io.inputs],
            "outputs": [o.to_json() for o in self.io.outputs],
        }
        if self.split.plan is not None:
            document["traffic_split"] = self.split.state()
        return document


def version_number(text: str | None) -> int | None:
    """A version as the protocol spells it to the int every other part uses; None for none
    (``""`` is gRPC's default) or text that is no version (``streamtrain.ascii_int``'s rule).

    >>> version_number("12"), version_number(""), version_number("\u00b2"), version_number("x")
    (12, None, None, None)
    """
    return parse_ascii_int(text) if text else None


def _config_tensor(name: str, datatype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"name": name, "data_type": _CONFIG_TYPES[datatype], "dims": list(shape)}
