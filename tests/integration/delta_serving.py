"""The row-sparse plugin model of ``tests/delta_fixtures`` as a real server's model, a writer
publishing its bases and deltas exactly as a trainer would (keeping every version's weights),
and the answers each version gives: what the tests of signed deltas and of swaps under load
share."""

from __future__ import annotations

import numpy as np
import torch

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.server import ServingWorker
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from tests.delta_fixtures import FACTORY, PARAMS, SparseTrainer, build_model, snapshot_request
from tests.integration.snapshot_harness import serve_settings

CHUNK = 4096  # several chunks per base

# The plugin embedding model as a server's ``model`` settings (regression, 4 features, the
# first two of them IDs): ``serve_settings(bootstrap, topic, model=EMBEDDING_MODEL, ...)``;
# the server imports it by name, so a test using it asks for the ``examples_on_path`` fixture.
EMBEDDING_MODEL = {"name": FACTORY, "task": "regression", "input_shape": [4], "params": PARAMS}


class DeltaChain:
    """A :class:`SparseTrainer` whose every snapshot the test writes itself: a base, then deltas
    each linked to the one before; the weights of every version written are kept."""

    def __init__(self, settings: Settings, signer: ManifestSigner | None = None) -> None:
        self.trainer = SparseTrainer()
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.live: int | None = None  # the newest version written with a valid link
        self.base_version: int | None = None
        self._settings = settings
        self._writers: dict[int, SnapshotWriter] = {}
        self.signer = signer

    def writer(self, signer: ManifestSigner | None) -> SnapshotWriter:
        key = id(signer)
        if key not in self._writers:
            self._writers[key] = SnapshotWriter(
                kafka=KafkaConnection.from_settings(self._settings.kafka),
                topic=self._settings.topics.snapshots,
                model_name=self._settings.model.name,
                settings_hash=settings_hash(self._settings.model.model_dump(mode="json")),
                chunk_bytes=CHUNK,
                signer=signer,
            )
        return self._writers[key]

    def base(self) -> SnapshotManifest:
        """Train (after the first) and write the whole model."""
        if self.states:
            self.trainer.train(2)
        rows = self.trainer.tracker.take()  # a base carries everything: the rows are dropped
        assert rows is None or self.states, "the tracker's first snapshot is a base"
        request = snapshot_request(self.trainer.model, self.trainer.step, "run-d", None)
        self.states[request.version] = self.trainer.state()
        manifest = self.writer(self.signer).write(request)
        self.live = self.base_version = request.version
        return manifest

    def delta(self, signer: ManifestSigner | str | None = "own") -> SnapshotManifest:
        """Train 2 steps and write the touched rows as a delta on the last version written,
        signed by ``signer`` (the chain's own by default)."""
        assert self.live is not None, "write a base first"
        self.trainer.train(2, batch=64)
        request: SnapshotRequest = self.trainer.request()
        assert request.rows is not None
        self.states[request.version] = self.trainer.state()
        chosen = self.signer if signer == "own" else signer
        assert not isinstance(chosen, str)
        manifest = self.writer(chosen).write(
            request, base_id=f"run-d/{self.base_version}", predecessor_id=f"run-d/{self.live}"
        )
        self.live = request.version
        return manifest

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close(10)


def outputs_of(state: dict[str, torch.Tensor], rows: np.ndarray) -> np.ndarray:
    """What the model holding ``state`` answers for ``rows`` (the server's ``value``)."""
    model = build_model(seed=1)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(rows))
    return out.reshape(len(rows), -1).numpy()


# Every row of the embedding model's table in each request (IDs 0..249 and 499..250): each
# delta writes rows a running request reads.
ALL_ROWS = np.array([[i, 499 - i, 0.01 * i, -1.0] for i in range(250)], np.float32)


def embedding_worker(bootstrap: str, topic: str) -> tuple[DeltaChain, ServingWorker, str]:
    """A started server of the embedding model (gRPC on a free port) following ``topic``,
    created here, the chain that publishes to it, and the server's URL."""
    create_topics(bootstrap, [topic])
    settings = serve_settings(bootstrap, topic, model=EMBEDDING_MODEL, grpc_port=0)
    chain = DeltaChain(settings)
    worker = build_worker(settings)
    return chain, worker, worker.start()


def infer_body(rows: np.ndarray) -> dict[str, object]:
    """An Open Inference Protocol REST request body asking the served model about ``rows``."""
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.ravel().tolist()}
        ]
    }  # fmt: skip
