"""The serving worker's HTTP transport (serve/transport.py): one write per response, and the
protocol's behaviour kept on raw sockets: pipelining, bodies split across packets, chunked
bodies, clients leaving mid-body, oversized headers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.transport import _FLUSH_BYTES, CoalescingTransport
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import running_worker, served_model

_SPEC = SampleSpec((2,), "regression")
_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()
_PATH = "/v2/models/m/infer"


class _Recorder:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def _coalescing() -> tuple[asyncio.AbstractEventLoop, _Recorder, CoalescingTransport]:
    loop = asyncio.new_event_loop()
    recorder = _Recorder()
    return loop, recorder, CoalescingTransport(recorder, loop)  # type: ignore[arg-type]


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    loop, recorder, transport = _coalescing()
    try:
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")
        transport.writelines([b"body", bytearray(b"-more")])
        assert recorder.writes == []
        assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody-more")
        _turn(loop)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-more"]
        transport.write(b"next")
        _turn(loop)
        assert recorder.writes[1:] == [b"next"]
        assert transport.get_extra_info("peername") == "info peername"
    finally:
        loop.close()


def test_close_writes_what_is_gathered_first_and_abort_drops_it() -> None:
    loop, recorder, transport = _coalescing()
    try:
        transport.write(b"last answer")
        transport.close()
        assert recorder.writes == [b"last answer"] and recorder.closed
        _turn(loop)  # the flush scheduled by the write finds nothing left
        assert recorder.writes == [b"last answer"]
        loop2, recorder2, transport2 = _coalescing()
        transport2.write(b"never sent")
        transport2.abort()
        _turn(loop2)
        assert recorder2.writes == [] and recorder2.aborted
        loop2.close()
    finally:
        loop.close()


def test_a_large_response_is_written_at_once_past_the_limit() -> None:
    loop, recorder, transport = _coalescing()
    try:
        transport.write(b"h" * 10)
        transport.write(b"b" * _FLUSH_BYTES)
        assert recorder.writes == [b"h" * 10 + b"b" * _FLUSH_BYTES]
    finally:
        loop.close()


@pytest.fixture
def worker() -> Iterator[ServingWorker]:
    slot = WeightSlot(torch.nn.Linear(2, 1))
    slot.load(
        {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5])}, SnapshotHeader(1, "r")
    )
    with running_worker(served_model(slot, _SPEC, "m")) as running:
        yield running


def _request(body: bytes = _BODY, extra: str = "") -> bytes:
    head = f"POST {_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _read_response(conn: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    """One response off ``conn`` (bytes beyond it stay in ``pending``): status and body."""
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a full response: {bytes(pending)!r}"
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    pending[:] = rest[length:]
    return status, rest[:length]


def _value(body: bytes) -> float:
    return float(json.loads(body)["outputs"][0]["data"][0])


def test_a_response_arrives_whole_in_one_read(worker: ServingWorker) -> None:
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        for _ in range(3):  # keep-alive: the same connection answers again
            conn.sendall(_request())
            first = conn.recv(65536)  # one send() of the server lands as one segment
            head, _, body = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            assert len(body) == length and _value(body) == 3.5


def test_pipelined_requests_are_answered_in_order(worker: ServingWorker) -> None:
    bodies = [
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [i, i]}]}
        ).encode()
        for i in range(5)
    ]
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(b"".join(_request(body) for body in bodies))
        pending = bytearray()
        answers = [_read_response(conn, pending) for _ in bodies]
    assert [status for status, _ in answers] == [200] * 5
    assert [_value(body) for _, body in answers] == [2.0 * i + 0.5 for i in range(5)]


def test_a_body_split_across_packets_and_a_chunked_body_are_read_whole(
    worker: ServingWorker,
) -> None:
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        whole = _request()
        for cut in (10, len(whole) - len(_BODY) + 7, len(whole) - 1):
            conn.sendall(whole[:cut])
            conn.sendall(whole[cut:])
            assert _value(_read_response(conn, bytearray())[1]) == 3.5
        head = f"POST {_PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head.encode())
        for part in (_BODY[:13], _BODY[13:40], _BODY[40:]):
            conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.sendall(b"0\r\n\r\n")
        status, body = _read_response(conn, bytearray())
        assert status == 200 and _value(body) == 3.5


def test_a_client_leaving_mid_body_leaves_the_server_serving(worker: ServingWorker) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
            conn.sendall(_request()[: -len(_BODY) // 2])
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(_request())
        status, body = _read_response(conn, bytearray())
    assert status == 200 and _value(body) == 3.5


def test_oversized_headers_get_a_4xx_or_a_closed_connection_never_a_5xx(
    worker: ServingWorker,
) -> None:
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        try:
            conn.sendall(_request(extra="X-Big: " + "a" * (1 << 20) + "\r\n"))
            answer = conn.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(_request())
        assert _read_response(conn, bytearray())[0] == 200


def test_a_large_body_or_many_pipelined_requests_in_one_packet_are_not_a_large_head(
    worker: ServingWorker,
) -> None:
    """Only the head counts against the head limit, however the bytes after it arrive: a body
    of 200 KiB sent with its head in one write, and 1,000 small requests pipelined in one."""
    padded = _BODY + b" " * (200 * 1024)  # JSON allows trailing whitespace
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(_request(padded))
        status, body = _read_response(conn, bytearray())
        assert status == 200 and _value(body) == 3.5
        conn.sendall(_request() * 1000)
        pending = bytearray()
        answers = [_read_response(conn, pending) for _ in range(1000)]
    assert {status for status, _ in answers} == {200}
