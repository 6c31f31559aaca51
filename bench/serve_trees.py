"""The serving path of two source trees, side by side on one machine: is a change within noise?

For each tree, in its own process with that tree first on ``PYTHONPATH`` (so its own builders,
slot, engine, data plane and app run), a serving worker on the CPU with one torch thread and
the ``bench/serve.py`` model (MLP 32 → 256 → 256 → 10, direct engine, no Kafka: the weights are
loaded into the slot once); ``--threads`` client threads post one OIP JSON row each, in a loop,
for ``--seconds`` after a one-second warm-up. The trees alternate, their order flipping every
round, so drifting machine load hits both alike; prints req/s per run, the medians and the
ratio of each round (second tree ÷ first).

    git archive main | tar -x -C /tmp/base
    .venv/bin/python bench/serve_trees.py /tmp/base . --rounds 8 --seconds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def build_worker(port: int = 0, http: str | None = None, grpc: bool = False) -> Any:
    """A serving worker of the tree on ``sys.path`` (not started) over the bench model with
    fixed weights; ``http`` picks its HTTP protocol (a tree's own default when None), ``grpc``
    adds the gRPC port (any free one; ``worker.grpc.target``). Imports that moved between
    trees are tried at both places."""
    import torch

    torch.set_num_threads(1)
    from streamtrain.config import load_settings
    from streamtrain.serve.protocol.bodies import ModelIO
    from streamtrain.serve.protocol.dataplane import ServedModel
    from streamtrain.serve.protocol.rest import create_app
    from streamtrain.serve.server import ServingWorker
    from streamtrain.serve.weights.watcher import NoSnapshots, SnapshotWatcher
    from streamtrain.snapshot.manifest import SnapshotHeader
    from streamtrain.train.models import build_model

    builders: Any
    try:
        import streamtrain.builders.server as builders
        from streamtrain.sample.spec import spec_for_model
    except ImportError:  # a tree before the builders and the sample's types moved
        from streamtrain.spec import spec_for_model  # type: ignore[no-redef]

        import streamtrain.serve.server as builders

    model = {
        "name": "mlp",
        "task": "multiclass",
        "input_shape": [32],
        "num_classes": 10,
        "params": {"hidden_sizes": [256, 256]},
    }
    settings = load_settings(overrides={"model": model})
    spec = spec_for_model(settings.model)
    cpu = torch.device("cpu")
    slot = builders.build_slot(settings.model, cpu)
    torch.manual_seed(0)
    slot.load(build_model("mlp", spec, settings.model.params).state_dict(), SnapshotHeader(1, "ab"))
    engine = builders.build_engine(slot, spec, cpu, 64, "direct")
    served = ServedModel(slot=slot, engine=engine, io=ModelIO.for_spec(spec), name="bench")
    app = create_app(served=served, max_body_bytes=1 << 20)
    extra: dict[str, Any] = {} if http is None else {"http": http}
    if grpc:
        from streamtrain.serve.protocol.grpc_service import GrpcServer

        extra["grpc"] = GrpcServer(served, "127.0.0.1", 0, max_message_bytes=1 << 20)
    worker = ServingWorker(
        app=app,
        served=served,
        watcher=SnapshotWatcher(NoSnapshots(), slot),
        host="127.0.0.1",
        port=port,
        **extra,
    )
    worker.served = served  # for a transport of the bench's own (bench/grpc_floor.py)
    return worker


def _worker(seconds: float, threads: int) -> float:
    """Serve from the tree on ``sys.path`` and load it; req/s."""
    import httpx
    import numpy as np

    worker = build_worker()
    url = worker.start() + "/v2/models/bench/infer"
    values = np.random.default_rng(0).normal(size=32).astype(np.float32).tolist()
    tensor = {"name": "input", "shape": [1, 32], "datatype": "FP32", "data": values}
    body = json.dumps({"inputs": [tensor]})
    counts = [0] * threads

    def load(i: int, until: float) -> None:
        with httpx.Client(headers={"content-type": "application/json"}) as client:
            while time.monotonic() < until:
                response = client.post(url, content=body)
                if response.status_code != 200:
                    raise SystemExit(f"HTTP {response.status_code}: {response.text}")
                counts[i] += 1

    try:
        load(0, time.monotonic() + 1.0)  # warm-up, not counted
        counts[0] = 0
        started = time.monotonic()
        until = started + seconds
        clients = [threading.Thread(target=load, args=(i, until)) for i in range(threads)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        return sum(counts) / (time.monotonic() - started)
    finally:
        worker.stop()


def _run(tree: Path, seconds: float, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--child", str(seconds), str(threads)]
    done = subprocess.run(
        command, env=env, cwd=tree, capture_output=True, text=True, timeout=seconds + 120
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(_worker(float(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a source tree (its streamtrain/ is served)")
    parser.add_argument("second", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="load per run")
    parser.add_argument("--threads", type=int, default=2, help="client threads")
    args = parser.parse_args()
    trees = [args.first.resolve(), args.second.resolve()]
    rates: dict[Path, list[float]] = {tree: [] for tree in trees}
    ratios = []
    for i in range(args.rounds):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            rates[tree].append(_run(tree, args.seconds, args.threads))
            print(f"round {i + 1}: {tree}: {rates[tree][-1]:.0f} req/s", flush=True)
        ratios.append(rates[trees[1]][-1] / rates[trees[0]][-1])
    for tree in trees:
        runs = rates[tree]
        print(
            f"{tree}: median {statistics.median(runs):.0f} req/s ({min(runs):.0f}-{max(runs):.0f})"
        )
    print(
        f"second / first per round: median {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
