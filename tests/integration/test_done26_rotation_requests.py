"""Issue 26, "a base rotation under load with 0 failed requests", on a real server over HTTP and
gRPC: once the first base is live, clients ask without pause while the writer goes base,
delta, delta, base, ... (each base streamed into the row-sparse table the deltas write in
place, in the slot's exclusive section). Every request must succeed: no 503, no other status,
no transport error, no gRPC error status; every answer is exactly one version's output, the
version it names; and every client is answered by every base written after the first.

``test_snapshot_streamed_load.py`` checks the same on the slot alone (forward passes), and
``test_swap_atomic_clients.py`` checks answers during swaps but lets a 503 pass."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from streamtrain.serve.server import ServingWorker
from tests.integration.delta_serving import ALL_ROWS, embedding_worker, infer_body, outputs_of
from tests.integration.snapshot_harness import wait

ROTATIONS = 3
Answer = tuple[int, bytes]  # (version named, output bytes)


def _http(url: str, rows: np.ndarray) -> Callable[[], Answer]:
    body = infer_body(rows)
    session = httpx.Client(timeout=30)

    def ask() -> Answer:
        response = session.post(f"{url}/v2/models/m/infer", json=body)
        assert response.status_code == 200, (response.status_code, response.text[:200])
        payload = response.json()
        (value,) = [o for o in payload["outputs"] if o["name"] == "value"]
        data = np.array(value["data"], np.float32).reshape(len(rows), -1)
        return int(payload["model_version"]), data.tobytes()

    return ask


def _grpc(worker: ServingWorker, rows: np.ndarray) -> Callable[[], Answer]:
    assert worker.grpc is not None
    client = grpcclient.InferenceServerClient(worker.grpc.target)

    def ask() -> Answer:
        tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("m", [tensor])  # an error status raises
        data = result.as_numpy("value").reshape(len(rows), -1).astype(np.float32)
        return int(result.get_response().model_version), data.tobytes()

    return ask


class _Clients:
    """One thread per client, asking without pause; every answer kept, every failure too."""

    def __init__(self, ask: dict[str, Callable[[], Answer]]) -> None:
        self.answers: dict[str, list[Answer]] = {name: [] for name in ask}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, fn), daemon=True)
            for name, fn in ask.items()
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, ask: Callable[[], Answer]) -> None:
        while not self._stop.is_set():
            try:
                self.answers[name].append(ask())
            except BaseException as exc:  # a failed request: kept, and the client goes on
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}"[:300])

    def answered(self, version: int) -> bool:
        """Every client has been answered by ``version``."""
        assert not self.failures, self.failures[:5]
        return all(any(v == version for v, _ in list(a)) for a in self.answers.values())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_base_rotations_under_http_and_grpc_load_fail_no_request(
    kafka_bootstrap: str, unique_name: str, examples_on_path: None
) -> None:
    rows = ALL_ROWS
    chain, worker, url = embedding_worker(kafka_bootstrap, unique_name)
    clients: _Clients | None = None
    bases: list[int] = []

    def live(version: int) -> Callable[[], bool]:
        return lambda: worker.slot.info is not None and worker.slot.info.version == version

    try:
        bases.append(chain.base().version)
        wait(live(bases[0]), "the first base live")
        clients = _Clients(
            {"http-1": _http(url, rows), "http-2": _http(url, rows), "grpc": _grpc(worker, rows)}
        )
        for _ in range(ROTATIONS):
            for _ in range(2):
                version = chain.delta().version
                wait(live(version), f"delta {version} live")
            bases.append(chain.base().version)
            wait(live(bases[-1]), f"base {bases[-1]} live")
            # requests run on this base before the next snapshot: awaited, not timed
            wait(lambda: clients is not None and clients.answered(bases[-1]), "answers")
    finally:
        if clients is not None:
            clients.stop()
        worker.stop()
        chain.close()
    assert clients is not None
    assert clients.failures == [], clients.failures[:5]
    expected = {v: outputs_of(state, rows) for v, state in chain.states.items()}
    total = 0
    for name, answers in clients.answers.items():
        for version, raw in answers:
            got = np.frombuffer(raw, np.float32).reshape(expected[version].shape)
            matching = [v for v, want in expected.items() if np.allclose(got, want, 1e-5, 1e-6)]
            assert matching == [version], (name, version, matching)
        total += len(answers)
        assert {v for v, _ in answers} >= set(bases[1:]), (name, bases)
    assert len(bases) == ROTATIONS + 1 and total > 0
    print(f"bases {bases}; requests answered {total}, failed 0")
