"""Issue 26, "corrupt / missing / reordered chunks during a streamed load leave the old weights
serving and the server consistent", on a real server: while an HTTP client asks without pause,
bases whose chunks are altered, missing or swapped are refused (counted on the real /metrics
by reason), every request is answered 200 by the old version with its exact output, the
server stays ready; a base whose intact chunks arrive shuffled then goes live.

``test_snapshot_streamed_load.py`` checks the same cases on the slot alone (a running replica's
tail and a new replica's scan)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import numpy as np

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.snapshot.manifest import settings_hash
from tests.delta_fixtures import build_model, model_state
from tests.integration.delta_serving import EMBEDDING_MODEL, outputs_of
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import serve_settings, wait
from tests.integration.test_snapshot_streamed_load import _publish_by_hand
from tests.integration.trainer_harness import scrape

REJECTED = "streamtrain_serve_rejected_snapshots_total"


def _rejected(metrics: dict[str, float], reason: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(REJECTED) and f'"{reason}"' in k)


class _Client:
    """Asks ``url`` without pause; keeps each answer's (status, version, output bytes)."""

    def __init__(self, url: str, rows: np.ndarray) -> None:
        self.answers: list[tuple[int, str, bytes]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        body = {
            "inputs": [
                {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                 "data": rows.ravel().tolist()}
            ]
        }  # fmt: skip
        self._thread = threading.Thread(target=self._run, args=(url, body, len(rows)))
        self._thread.start()

    def _run(self, url: str, body: dict[str, object], n: int) -> None:
        with httpx.Client(timeout=30) as session:
            while not self._stop.is_set():
                try:
                    response = session.post(f"{url}/v2/models/m/infer", json=body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.answers.append((response.status_code, "", b""))
                    continue
                payload = response.json()
                (value,) = [o for o in payload["outputs"] if o["name"] == "value"]
                data = np.array(value["data"], np.float32).reshape(n, -1)
                self.answers.append((200, str(payload["model_version"]), data.tobytes()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_bad_chunks_leave_the_old_version_answering_on_a_real_server(
    kafka_bootstrap: str, unique_name: str, examples_on_path: None
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name, model=EMBEDDING_MODEL)
    digest = settings_hash(settings.model.model_dump(mode="json"))
    states = {v: model_state(build_model(seed=v)) for v in range(1, 6)}
    rows = np.array([[i, 499 - i, 0.01 * i, -1.0] for i in range(250)], np.float32)
    expected = {v: outputs_of(state, rows) for v, state in states.items()}
    worker = build_worker(settings)
    url = worker.start()

    def publish(version: int, how: str) -> None:
        _publish_by_hand(kafka_bootstrap, unique_name, states[version], version, how, digest)

    def live(version: int) -> Callable[[], bool]:
        return lambda: worker.slot.info is not None and worker.slot.info.version == version

    client: _Client | None = None
    try:
        publish(1, "intact")
        wait(live(1), "version 1 live")
        before = scrape(f"{url}/metrics")
        client = _Client(url, rows)
        wait(lambda: client is not None and len(client.answers) > 0, "a first answer")
        for version, how in ((2, "altered"), (3, "missing"), (4, "swapped")):
            publish(version, how)

        def refused() -> bool:
            now = scrape(f"{url}/metrics")
            checksum = _rejected(now, "checksum") - _rejected(before, "checksum")
            incomplete = _rejected(now, "incomplete") - _rejected(before, "incomplete")
            return checksum >= 2 and incomplete >= 1  # altered and swapped; missing

        wait(refused, "the three bad bases refused, by reason, on /metrics")
        seen = len(client.answers)
        wait(lambda: client is not None and len(client.answers) > seen, "answers after them")
        assert httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200
        assert worker.slot.info is not None and worker.slot.info.version == 1
        while_bad = list(client.answers)
        publish(5, "reordered")
        wait(live(5), "version 5 (shuffled intact chunks) live")
        wait(lambda: client is not None and any(v == "5" for _, v, _ in client.answers), "v5")
    finally:
        if client is not None:
            client.stop()
        worker.stop()
    assert client.errors == [], client.errors[:3]
    assert {status for status, _, _ in client.answers} == {200}
    assert {v for _, v, _ in while_bad} == {"1"}  # only the old version answered meanwhile
    for _, version, raw in client.answers:
        got = np.frombuffer(raw, np.float32).reshape(expected[int(version)].shape)
        np.testing.assert_allclose(got, expected[int(version)], rtol=1e-5, atol=1e-6)
    assert {v for _, v, _ in client.answers} == {"1", "5"}
