"""Trainer, server and a real broker together: swaps under load, no torn answer.

Every response names its ``model_version``; its output must equal the output of that
version's snapshot, recomputed offline from the snapshot bytes on the topic.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from streamtrain.builders.server import build_worker
from streamtrain.builders.trainer import build_trainer
from streamtrain.config import Settings
from streamtrain.demo.scrape import scrape
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import spec_for_model
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import ReceivedSnapshot, SnapshotSubscriber
from streamtrain.snapshot.versions import newest_version
from streamtrain.train.models import build_model
from streamtrain.train.task import TaskHead
from tests.integration.process_output import AWAIT_S
from tests.integration.snapshot_harness import wait
from tests.integration.trainer_harness import (
    FEATURES,
    hyperplane_stream,
    pipeline_settings,
    produce_json,
    read_to_the_end,
    stop_on_the_last,
)
from tests.threads import Workers

INPUT = np.linspace(-1, 1, FEATURES, dtype=np.float32)


def _settings(bootstrap: str, name: str, root: Path, samples: int) -> Settings:
    return pipeline_settings(
        bootstrap,
        name,
        root,
        ingest={"group_id": name, "max_batch_size": 4, "max_wait_ms": 20},
        model={"name": "mlp", "input_shape": [FEATURES], "params": {"hidden_sizes": [8]}},
        optimizer={"name": "sgd", "lr": 0.05},
        train={
            "snapshot_every_steps": 1,
            "snapshot_every_seconds": 0.001,
            "torch_threads": 1,
            # Not a 2-s idle stop: the clients' threads share this process, and one run at
            # load 28 went 1.6 s between two batches.
            **stop_on_the_last(samples),
        },
        serve={"port": 0, "model_name": "m"},
    )


def test_swaps_under_load_and_no_torn_answer(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(4800, seed=9)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    settings = _settings(kafka_bootstrap, unique_name, tmp_path, len(x))
    digest = settings_hash(settings.model.model_dump(mode="json"))

    collector = SnapshotCollector(settings, digest)
    worker = build_worker(settings)
    url = worker.start()
    answers: list[tuple[str, list[float]]] = []
    done = threading.Event()

    def load() -> None:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, FEATURES],
                    "datatype": "FP32",
                    "data": INPUT.tolist(),
                }
            ],
            "outputs": [{"name": "probabilities"}],
        }
        # A client error, a 4xx/5xx or a broken body ends the thread and fails the test. The
        # timeout only reports a hang: the trainer and three clients share this process's GIL
        # on a loaded machine.
        with httpx.Client(base_url=url, timeout=60) as http:
            while not done.is_set():
                reply = http.post("/v2/models/m/infer", json=body)
                if reply.status_code == 503:
                    continue  # not ready yet: no snapshot live
                assert reply.status_code == 200, f"{reply.status_code}: {reply.text}"
                doc = reply.json()
                answers.append((doc["model_version"], doc["outputs"][0]["data"]))

    clients = Workers()
    try:
        for _ in range(3):
            clients.start(load)
        summary = build_trainer(settings).run()
        last = newest_version(
            KafkaConnection.from_settings(settings.kafka), settings.topics.snapshots, digest
        )
        # The load goes on until the server answers with the trainer's last snapshot: however
        # slow the machine, the clients saw every swap up to the end.
        wait(
            lambda: clients.failed or any(v == str(last) for v, _ in answers[-100:]),
            f"an answer from the last published version {last}",
            timeout_s=AWAIT_S,  # a hang's bound
        )
        swaps = scrape(worker.metrics_url, 60.0).total("streamtrain_serve_swaps_total")
    finally:
        done.set()
        clients.join(30)
        worker.stop()

    assert summary.samples_seen == len(x), "every produced sample was learned"
    read_to_the_end(tmp_path, len(x))
    served_versions = {version for version, _ in answers}
    # Versions change only by a swap: each version the clients saw after the first is one.
    assert len(served_versions) >= 2, f"the load saw no swap: {served_versions}"
    assert swaps >= len(served_versions) - 1, (swaps, len(served_versions))

    snapshots = collector.finish()
    assert served_versions <= {str(v) for v in snapshots}, "served a version never published"
    spec = spec_for_model(settings.model)
    model = build_model("mlp", spec, settings.model.params).eval()
    head = TaskHead(spec)
    expected: dict[str, list[float]] = {}
    for version in served_versions:
        model.load_state_dict(snapshots[int(version)])
        with torch.inference_mode():
            probs = head.predict(model(torch.from_numpy(INPUT[None])))["probabilities"]
        expected[version] = probs.flatten().tolist()
    torn = [(v, out) for v, out in answers if not np.allclose(out, expected[v], rtol=0, atol=1e-6)]
    assert not torn, f"{len(torn)} answers differ from their version's snapshot: {torn[:3]}"


class SnapshotCollector:
    """Follows the snapshot topic from before the trainer starts, keeping every version."""

    def __init__(self, settings: Settings, digest: str) -> None:
        self.found: dict[int, dict[str, torch.Tensor]] = {}
        self.problems: list[object] = []
        self._subscriber = SnapshotSubscriber(
            kafka=KafkaConnection.from_settings(settings.kafka),
            topic=settings.topics.snapshots,
            settings_hash=digest,
        )
        self._subscriber.poll(0.5)  # places the tail at the (empty) topic's end
        self._stop = threading.Event()
        self._thread = Workers()  # a failure while following fails finish()
        self._thread.start(self._follow)

    def _follow(self) -> None:
        idle_since = time.monotonic()
        while not (self._stop.is_set() and time.monotonic() - idle_since > 3.0):
            events = self._subscriber.poll(0.5)
            if events:
                idle_since = time.monotonic()
            for event in events:
                if isinstance(event, ReceivedSnapshot):
                    self.found[event.manifest.version] = event.tensors
                else:
                    self.problems.append(event)

    def finish(self) -> dict[int, dict[str, torch.Tensor]]:
        """Drain what is still on the topic (stops after 3 s without a new snapshot)."""
        self._stop.set()
        try:
            self._thread.join(60)
        finally:
            self._subscriber.close()
        assert not self.problems, self.problems[:3]
        return self.found
