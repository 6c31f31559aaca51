"""Guarantee 4 under load on the real broker: while a real server swaps versions, every answer
over HTTP and over gRPC (``tritonclient.grpc``) equals what exactly one version's weights give,
and that version is the ``model_version`` the answer names. Expected outputs are computed per
version offline from the weights that were published; for the row-sparse model the shared
embedding table is written in place by every delta while requests run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.serve.server import ServingWorker
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import build_model
from tests.integration.delta_serving import ALL_ROWS, embedding_worker, infer_body, outputs_of
from tests.integration.snapshot_harness import publish, serve_settings, wait
from tests.threads import Workers
from tests.version_fixtures import expected_value

Answer = tuple[str, np.ndarray]
DISTINCT = 6  # versions the clients must have seen answered before the swaps stop
TIMEOUT_S = 120.0


class Clients:
    """Threads asking a server without pause; answers kept per (version, value bytes);
    a client's exception fails the test (raised again by :meth:`stop`, ``tests/threads.py``)."""

    def __init__(self, ask: dict[str, Callable[[], Answer | None]]) -> None:
        self.seen: dict[str, dict[str, set[bytes]]] = {name: {} for name in ask}
        self.answers = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = Workers()
        for name, fn in ask.items():
            self._workers.start(self._run, name, fn)

    def _run(self, name: str, ask: Callable[[], Answer | None]) -> None:
        while not self._stop.is_set():
            answer = ask()
            if answer is not None:
                version, values = answer
                with self._lock:
                    self.answers += 1
                    self.seen[name].setdefault(version, set()).add(values.tobytes())

    def enough(self) -> bool:
        """Every client has seen DISTINCT versions answered (a failed client: stop now)."""
        if self._workers.failed:
            self.stop()
        with self._lock:
            return all(len(versions) >= DISTINCT for versions in self.seen.values())

    def stop(self) -> None:
        self._stop.set()
        self._workers.join(30)


def _http(url: str, rows: np.ndarray) -> Callable[[], Answer | None]:
    body = infer_body(rows)
    session = httpx.Client(timeout=30)

    def ask() -> Answer | None:
        response = session.post(f"{url}/v2/models/m/infer", json=body)
        if response.status_code == 503:
            return None
        response.raise_for_status()  # any other 4xx/5xx fails the test
        payload = response.json()
        (value,) = [o for o in payload["outputs"] if o["name"] == "value"]
        data = np.array(value["data"], np.float32).reshape(len(rows), -1)
        return str(payload["model_version"]), data

    return ask


def _grpc(worker: ServingWorker, rows: np.ndarray) -> Callable[[], Answer | None]:
    assert worker.grpc is not None
    client = grpcclient.InferenceServerClient(worker.grpc.target)

    def ask() -> Answer | None:
        if not client.is_model_ready("m"):
            return None
        tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("m", [tensor])  # an error status raises: fails the test
        version = result.get_response().model_version
        return version, result.as_numpy("value").reshape(len(rows), -1).astype(np.float32)

    return ask


def _check(
    clients: Clients, expected: dict[int, np.ndarray], rtol: float, atol: float
) -> dict[str, int]:
    """Every answer equals exactly one version's expected output, the version it names."""
    for a, b in zip(sorted(expected), sorted(expected)[1:], strict=False):
        # Neighbouring versions answer differently, so a mixed or misnamed answer shows.
        assert not np.allclose(expected[a], expected[b], rtol=rtol, atol=atol), (a, b)
    counts: dict[str, int] = {}
    for name, by_version in clients.seen.items():
        counts[name] = len(by_version)
        for version, answers in by_version.items():
            for raw in answers:
                got = np.frombuffer(raw, np.float32).reshape(expected[int(version)].shape)
                matching = [v for v, want in expected.items() if np.allclose(got, want, rtol, atol)]
                assert matching == [int(version)], (name, version, matching, got.ravel()[:4])
    return counts


def _linear(version: int, rows: np.ndarray) -> np.ndarray:
    """``expected_value`` of every row: what version ``version``'s weights answer."""
    w = np.float32(version * 1e-3)
    assert np.isclose(expected_value(version, rows[0].tolist()), w * rows[0].sum() + w)
    return (w * rows.sum(axis=1, keepdims=True) + w).astype(np.float32)


def test_grpc_and_http_answers_during_swaps_each_come_from_one_version(
    kafka_bootstrap: str, unique_name: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name, grpc_port=0)
    # Many rows: a request holds its copy of the weights long enough for a swap to meet it.
    rows = np.random.default_rng(0).uniform(0.5, 1.5, size=(4096, 4)).astype(np.float32)
    worker = build_worker(settings)
    url = worker.start()
    clients = Clients({"grpc": _grpc(worker, rows), "http": _http(url, rows)})
    published: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not clients.enough():
            assert time.monotonic() < deadline, f"clients saw {clients.seen.keys()} too few"
            version = len(published) + 1
            publish(settings, version)
            published.append(version)
            wait(lambda v=version: worker.slot.info is not None and worker.slot.info.version == v,
                 f"version {version} live")  # fmt: skip
    finally:
        clients.stop()
        worker.stop()
    expected = {v: _linear(v, rows) for v in published}
    counts = _check(clients, expected, rtol=1e-5, atol=0.0)
    assert min(counts.values()) >= DISTINCT
    print(f"versions answered per client: {counts}; answers checked: {clients.answers}")


def test_row_sparse_answers_during_delta_applies_each_come_from_one_version(
    kafka_bootstrap: str, unique_name: str, examples_on_path: None
) -> None:
    rows = ALL_ROWS
    chain, worker, url = embedding_worker(kafka_bootstrap, unique_name)
    # The table the deltas write in place, held once by both copies of the slot (rule 5).
    assert list(row_sparse_parameters(build_model())) == ["table.weight"]
    clients = Clients(
        {"http-1": _http(url, rows), "http-2": _http(url, rows), "grpc": _grpc(worker, rows)}
    )
    try:
        chain.base()
        deadline = time.monotonic() + TIMEOUT_S
        while not clients.enough():
            assert time.monotonic() < deadline, "the clients saw too few versions"
            version = chain.delta().version
            wait(lambda v=version: worker.slot.info is not None and worker.slot.info.version == v,
                 f"delta {version} live")  # fmt: skip
    finally:
        clients.stop()
        worker.stop()
        chain.close()
    expected = {v: outputs_of(state, rows) for v, state in chain.states.items()}
    counts = _check(clients, expected, rtol=1e-5, atol=1e-6)
    assert min(counts.values()) >= DISTINCT
    print(f"versions answered per client: {counts}; answers checked: {clients.answers}")
