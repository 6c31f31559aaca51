"""The REST and gRPC data planes in process, no transport: CPU µs per call of each.

bench/serve_trees.py's served model (MLP 32 → 256 → 256 → 10, one torch thread, direct engine,
fixed weights), one thread on uvloop, calls back to back, thread CPU time:

- ``REST``: ``InferRoute.answer`` on a binary-tensor body (parse, forward, encode, accounting),
  what the serving worker's infer route runs per request once HTTP has been read;
- ``gRPC``: ``ModelInferRequest.FromString``, ``InferenceServicer._infer``, the stream's
  ``ModelStreamInferResponse`` and ``SerializeToString``, what the gRPC endpoint runs per
  stream message once grpcio has framed it.

The two alternate for ``--rounds``. What a transport adds is the server's CPU per request
(bench/grpc_serve.py) less this (bench/README.md, Serve, gRPC, run E).

    .venv/bin/python bench/grpc_inproc.py --calls 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]


async def _per_call_us(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    started = time.thread_time()
    for _ in range(calls):
        await call()
    return (time.thread_time() - started) / calls * 1e6


def _calls(batch: int) -> dict[str, Callable[[], Awaitable[Any]]]:
    import numpy as np
    from grpc_load import infer_request
    from serve import _rows_binary
    from serve_trees import build_worker
    from tritonclient.grpc import service_pb2

    from streamtrain.serve.protocol.grpc_service import InferenceServicer
    from streamtrain.serve.protocol.infer_route import InferBody, InferRoute

    served = build_worker().served
    route, servicer = InferRoute(served, 1 << 20), InferenceServicer(served)
    features = np.random.default_rng(1).normal(size=(batch, 32)).astype(np.float32)
    body = _rows_binary(features)
    arrived = InferBody(body.content, None, next(iter(body.headers.values())))
    message = infer_request("bench", features)

    async def read() -> InferBody:
        return arrived

    async def rest() -> Any:
        answer = await route.answer("bench", None, read)
        assert answer.status == 200, answer.body
        return answer

    async def grpc() -> bytes:
        reply = await servicer._infer(service_pb2.ModelInferRequest.FromString(message))
        stream = service_pb2.ModelStreamInferResponse(infer_response=reply)
        return bytes(stream.SerializeToString())

    return {"REST": rest, "gRPC": grpc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    import uvloop

    async def run() -> None:
        for batch in args.batches:
            calls = _calls(batch)
            for call in calls.values():  # warm-up
                await _per_call_us(call, 200)
            for i in range(args.rounds):
                names = list(calls) if i % 2 == 0 else list(calls)[::-1]
                figures = {name: await _per_call_us(calls[name], args.calls) for name in names}
                print(
                    f"batch {batch} round {i + 1}: "
                    + ", ".join(f"{n} {figures[n]:.1f} µs" for n in calls),
                    flush=True,
                )

    uvloop.run(run())


if __name__ == "__main__":
    main()
