"""The worker's fast infer route (serve/infer_protocol.py): infer requests answered by the data
plane without the ASGI app, on raw sockets, with every behaviour of the app's path kept:
the same bytes, pipelining (also behind ASGI requests and forwards on a thread), split and
chunked bodies, 100-continue, compressed bodies, body and head limits, HTTP/1.0, hang-ups,
and the same metrics."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.infer_protocol import InferRouteProtocol
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.weights.inference import DirectEngine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import NoSnapshots, SnapshotWatcher
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import app_for, served_model

_SPEC = SampleSpec((2,), "regression")
_PATH = "/v2/models/m/infer"
_LIMIT = 4096


def _body(x: float = 1.0) -> bytes:
    tensor = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [x, 2.0]}
    return json.dumps({"id": "r1", "inputs": [tensor]}).encode()


def _slot() -> WeightSlot:
    slot = WeightSlot(torch.nn.Linear(2, 1))
    slot.load(
        {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5])}, SnapshotHeader(1, "r")
    )
    return slot


@contextmanager
def _worker(http: str = "infer-route", *, threaded: bool = False) -> Iterator[ServingWorker]:
    """A worker over y = x0 + x1 + 0.5 with ``http`` as its protocol; ``threaded``: every
    forward runs on a thread, so each answer waits for the loop's next turns."""
    slot = _slot()
    engine = DirectEngine(slot, head_for(_SPEC), torch.device("cpu"), inline_below_s=0.0)
    served = served_model(slot, _SPEC, "m", engine=engine if threaded else None)
    worker = _start(served, http)
    try:
        yield worker
    finally:
        worker.stop()


def _start(served: ServedModel, http: str) -> ServingWorker:
    app = app_for(served, max_body_bytes=_LIMIT, metrics_registry=SERVER_REGISTRY)
    worker = ServingWorker(
        app=app,
        served=served,
        watcher=SnapshotWatcher(NoSnapshots(), served.slot),
        host="127.0.0.1",
        port=0,
        http=http,
    )
    worker.start()
    return worker


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests the fast route answered (not the ASGI app)."""
    answered: list[str] = []
    answer = InferRouteProtocol._answer

    def spy(self: InferRouteProtocol, cycle: object) -> None:
        answered.append(self.url.decode())
        answer(self, cycle)  # type: ignore[arg-type]

    monkeypatch.setattr(InferRouteProtocol, "_answer", spy)
    return answered


def _request(body: bytes = b"", extra: str = "", path: str = _PATH, http: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{http}\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _response(conn: socket.socket, pending: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off ``conn`` (what follows stays in ``pending``): status, headers, body."""
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a full response: {bytes(pending)!r}"
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    pending[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def _value(body: bytes) -> float:
    return float(json.loads(body)["outputs"][0]["data"][0])


def _exchange(worker: ServingWorker, data: bytes) -> bytes:
    """Everything the server writes for ``data`` (sent with ``Connection: close`` last)."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def _without_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"date: "))


def test_the_fast_route_and_the_app_write_the_same_bytes(fast_answers: list[str]) -> None:
    binary = b'{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32",' + (
        b'"parameters":{"binary_data_size":8}}],"outputs":[{"name":"value",'
        b'"parameters":{"binary_data":true}}]}'
    )
    binary_extra = f"Inference-Header-Content-Length: {len(binary)}\r\n"
    requests = [
        _request(_body()),
        _request(binary + b"\x00\x00\x80?\x00\x00\x00@", binary_extra),
        _request(gzip.compress(_body(3.0)), "Content-Encoding: gzip\r\n"),
        _request(b'{"inputs": [}'),
        _request(gzip.compress(b" " * (4 * _LIMIT)), "Content-Encoding: gzip\r\n"),  # inflates past
        _request(_body(), path="/v2/models/other/infer"),
        _request(_body(), path="/v2/models/m/versions/7/infer"),
        _request(_body(), "Content-Encoding: br\r\n"),
        _request(_body(), "Connection: close\r\n"),
    ]
    declared_too_large = _request(b" " * (_LIMIT + 1))  # answered by the app on both
    sent = declared_too_large + b"".join(requests)
    with _worker() as fast:
        fast_bytes = _exchange(fast, sent)
    assert len(fast_answers) == len(requests)
    with _worker("one-write") as app_path:
        app_bytes = _exchange(app_path, sent)
    assert len(fast_answers) == len(requests)  # the app answered the second run
    assert _without_date(fast_bytes) == _without_date(app_bytes)
    assert fast_bytes.count(b"HTTP/1.1 200 OK") == 4
    assert fast_bytes.count(b"HTTP/1.1 413") == 2
    assert fast_bytes.count(b"HTTP/1.1 404") == 2 and fast_bytes.count(b"HTTP/1.1 400") == 2


def test_pipelined_requests_are_answered_in_order_across_both_paths(
    fast_answers: list[str],
) -> None:
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    sequence = [_request(_body(1.0)), health, _request(_body(2.0)), _request(_body(3.0)), health]
    for threaded in (False, True):
        with (
            _worker(threaded=threaded) as worker,
            socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn,
        ):
            conn.sendall(b"".join(sequence) + _request(_body(4.0)) * 200)
            pending = bytearray()
            answers = [_response(conn, pending) for _ in range(len(sequence) + 200)]
        assert all(status == 200 for status, _, _ in answers)
        values = [_value(body) for _, _, body in answers if b"outputs" in body]
        assert values == [3.5, 4.5, 5.5] + [6.5] * 200
        assert json.loads(answers[1][2]) == {"live": True}
    assert len(fast_answers) == 2 * 203


def test_split_and_chunked_bodies_and_100_continue(fast_answers: list[str]) -> None:
    with _worker() as worker, socket.create_connection(("127.0.0.1", worker.port)) as conn:
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        whole = _request(_body())
        for cut in (5, whole.index(b"\r\n\r\n") + 4, len(whole) - 1):
            conn.sendall(whole[:cut])
            conn.sendall(whole[cut:])
            assert _value(_response(conn, bytearray())[2]) == 3.5
        body = _body(5.0)
        conn.sendall(
            f"POST {_PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for part in (body[:9], body[9:30], body[30:]):
            conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.sendall(b"0\r\n\r\n")
        assert _value(_response(conn, bytearray())[2]) == 7.5
        conn.sendall(
            _request(_body(6.0))[: -len(_body(6.0))][:-2] + b"Expect: 100-continue\r\n\r\n"
        )
        assert _response(conn, bytearray())[0] == 100
        conn.sendall(_body(6.0))
        assert _value(_response(conn, bytearray())[2]) == 8.5
    assert len(fast_answers) == 5


def test_a_body_over_the_limit_is_refused_at_once_and_the_connection_goes_on() -> None:
    with _worker() as worker, socket.create_connection(("127.0.0.1", worker.port)) as conn:
        conn.settimeout(10)
        conn.sendall(
            f"POST {_PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        conn.sendall(f"{_LIMIT + 1:x}\r\n".encode() + b" " * (_LIMIT + 1) + b"\r\n")
        status, _, body = _response(conn, bytearray())  # before the body has ended
        assert status == 413 and "max_body_bytes=4096" in json.loads(body)["error"]
        conn.sendall(b"10\r\n" + b" " * 16 + b"\r\n0\r\n\r\n")  # the rest, read and dropped
        conn.sendall(_request(_body()))
        assert _value(_response(conn, bytearray())[2]) == 3.5


def test_http_1_0_and_an_oversized_head_close_the_connection() -> None:
    with _worker() as worker:
        answer = _exchange(worker, _request(_body(), http="1.0"))
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close\r\n" in answer
        huge = _request(_body(), "X-Big: " + "a" * (128 * 1024) + "\r\n")
        try:
            refused = _exchange(worker, huge)
        except (ConnectionResetError, BrokenPipeError):
            refused = b""
        assert refused == b"" or refused.startswith(b"HTTP/1.1 431"), refused[:200]


def _scrape(worker: ServingWorker, outcome: str) -> float:
    answer = _exchange(worker, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    series = f'streamtrain_serve_requests_total{{outcome="{outcome}"}} '.encode()
    line = next(line for line in answer.split(b"\n") if line.startswith(series))
    return float(line.split()[-1])


def test_metrics_count_fast_route_answers_and_hang_ups_once(fast_answers: list[str]) -> None:
    with _worker() as worker:
        before = {o: _scrape(worker, o) for o in ("ok", "bad_request", "client_disconnected")}
        _exchange(worker, _request(_body()) * 3 + _request(b"{}", "Connection: close\r\n"))
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
            conn.sendall(_request(_body())[:-10])  # and leaves mid-body
        for _ in range(500):
            after = {o: _scrape(worker, o) for o in before}
            if after["client_disconnected"] > before["client_disconnected"]:
                break
        assert after["ok"] - before["ok"] == 3
        assert after["bad_request"] - before["bad_request"] == 1
        assert after["client_disconnected"] - before["client_disconnected"] == 1
    assert len(fast_answers) == 5


def test_keep_alive_closes_an_idle_connection_and_never_a_busy_one() -> None:
    with _worker() as worker:
        worker._server.config.timeout_keep_alive = 2  # read by each new connection
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
            pending = bytearray()
            for _ in range(15):  # 3 s of requests 0.2 s apart: past the timeout, never idle
                conn.sendall(_request(_body()))
                assert _value(_response(conn, pending)[2]) == 3.5
                threading.Event().wait(0.2)
            assert conn.recv(1) == b""  # then idle: closed after 2 s, before the 10 s timeout


def test_a_drain_answers_the_request_in_flight_then_closes() -> None:
    with _worker(threaded=True) as worker:
        conn = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
        whole = _request(_body(), "Expect: 100-continue\r\n")
        head_end = whole.index(b"\r\n\r\n") + 4
        conn.sendall(whole[:head_end])
        continued = bytearray()
        while b"\r\n\r\n" not in continued:  # the server has begun this request
            chunk = conn.recv(65536)
            assert chunk, "connection closed before 100 Continue"
            continued += chunk
        assert continued.startswith(b"HTTP/1.1 100 Continue")
        conn.sendall(whole[head_end:-5])  # a started request, its body unfinished
        stopping = threading.Thread(target=worker.stop)
        stopping.start()
        for _ in range(1000):  # until the drain has begun: no new connection is accepted
            try:
                socket.create_connection(("127.0.0.1", worker.port), timeout=1).close()
            except OSError:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the server went on accepting connections after stop()")
        conn.sendall(whole[-5:])
        status, headers, body = _response(conn, bytearray())
        assert status == 200 and _value(body) == 3.5
        assert headers.get("connection") == "close" and conn.recv(1) == b""
        conn.close()
        stopping.join(30)
        assert not stopping.is_alive()


class _BrokenEngine:
    async def infer(self, features: object, sparse: object = None) -> object:
        raise RuntimeError("a fault of the server, not of the request")

    def close(self) -> None:
        return None


def test_a_server_fault_is_one_500_line_on_both_paths(fast_answers: list[str]) -> None:
    answers = []
    for http in ("infer-route", "one-write"):
        served = served_model(_slot(), _SPEC, "m", engine=_BrokenEngine())  # type: ignore[arg-type]
        worker = _start(served, http)
        try:
            answers.append(_exchange(worker, _request(_body(), "Connection: close\r\n")))
        finally:
            worker.stop()
    assert len(fast_answers) == 1
    assert _without_date(answers[0]) == _without_date(answers[1])
    assert (
        answers[0].startswith(b"HTTP/1.1 500") and b"internal error during inference" in answers[0]
    )


def test_fast_answers_carry_the_default_headers_uvicorn_holds_now(
    fast_answers: list[str],
) -> None:
    """The fast route lays out uvicorn's default headers once per list uvicorn builds (it
    rebuilds them once a second, for the date): a header added to the server's config shows
    on the same keep-alive connection once uvicorn's next tick has rebuilt the list."""
    with _worker() as worker, socket.create_connection(("127.0.0.1", worker.port), 10) as conn:
        pending = bytearray()
        conn.sendall(_request(_body()))
        status, headers, _ = _response(conn, pending)
        assert status == 200 and "date" in headers and "x-probe" not in headers
        config = worker._server.config
        config.encoded_headers = [*config.encoded_headers, (b"x-probe", b"1")]
        for _ in range(400):  # uvicorn's tick rebuilds the list every second; 0.05 s per turn
            conn.sendall(_request(_body()))
            status, headers, _ = _response(conn, pending)
            assert status == 200
            if "x-probe" in headers:
                break
            threading.Event().wait(0.05)
        assert headers.get("x-probe") == "1" and "date" in headers
        assert len(fast_answers) >= 2 and set(fast_answers) == {_PATH}
