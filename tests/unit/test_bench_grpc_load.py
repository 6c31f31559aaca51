"""bench/grpc_load.py's h2load client: gRPC-framed unary calls that a real grpcio server
answers, counted and timed from h2load's log (no throughput is asserted)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed"
)


class _Echo(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers each ModelInfer with its row count, so a test can see the request parsed."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def ModelInfer(self, request: Any, context: Any) -> Any:
        self.rows.append(int(request.inputs[0].shape[0]))
        return service_pb2.ModelInferResponse(model_name=request.model_name)


@pytest.fixture
def grpc_load() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import grpc_load

        yield grpc_load
    finally:
        sys.path.remove(str(BENCH))


def test_h2load_calls_are_grpc_requests_the_server_parses(grpc_load: Any) -> None:
    servicer = _Echo()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        request = grpc_load.infer_request("bench", np.ones((3, 4), np.float32))
        result, client_us = grpc_load.run_h2load_unary(
            f"127.0.0.1:{port}", request, connections=2, seconds=1.0
        )
    finally:
        server.stop(None)
    assert result.requests > 0 and result.errors == 0
    # every logged answer is a call the servicer parsed (it may have answered a few more,
    # cut off when h2load stopped), each with the 3 rows sent
    assert len(servicer.rows) >= result.requests and set(servicer.rows) == {3}
    assert 0 < result.p50_ms <= result.p99_ms and result.seconds > 0 and client_us > 0
