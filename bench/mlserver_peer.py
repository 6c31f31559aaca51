"""The MLServer peer for bench/serve.py: the same model as an MLServer custom runtime.

``BenchRuntime`` (an ``mlserver.MLModel``) decodes the v2 (Open Inference Protocol) input
with MLServer's ``NumpyCodec``, runs bench/peer_model.py's MLP (one torch thread) and answers
the same two outputs as streamtrain (probabilities FP32, predicted class INT64). ``main``
writes MLServer's ``settings.json`` and ``model-settings.json`` into ``--workdir`` and runs
``mlserver start`` there: REST on ``--port``, gRPC and the metrics server on free ports,
``--parallel-workers`` inference processes, 0 by default: inference in the one server
process, as streamtrain's (MLServer's own default, 1, hands each request to a worker process;
with MLServer 1.7.1 and the uvloop it installs, that worker dies at start: "There is no
current event loop"). Runs in its own virtual environment
(``make bench-peers``: bench/.peers/mlserver). Swap rows: while ``--swap-flag`` exists a thread
in the process holding the model copies fresh weights into it every ``--swap-every`` seconds
(bench/peer_model.py), counting them in ``--swap-count``.

Run by bench/serve.py: ``bench/.peers/mlserver/bin/python bench/mlserver_peer.py --port 8003 ...``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from peer_model import PeerModel, peer_arguments


class BenchRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self.peer = PeerModel(int(extra["hidden"]))
        self.peer.start_swapper(
            Path(extra["swap_flag"]), Path(extra["swap_count"]), float(extra["swap_every"])
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = NumpyCodec.decode_input(payload.inputs[0])
        probabilities, predicted = self.peer.predict(features)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("probabilities", probabilities),
                NumpyCodec.encode_output("predicted_class", predicted),
            ],
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = peer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--parallel-workers", type=int, default=0)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": args.port,
        "grpc_port": _free_port(),
        "metrics_port": _free_port(),
        "parallel_workers": args.parallel_workers,
        "debug": False,
    }
    model = {
        "name": "bench",
        "implementation": "mlserver_peer.BenchRuntime",
        "parameters": {
            "extra": {
                "hidden": args.hidden,
                "swap_flag": str(args.swap_flag),
                "swap_count": str(args.swap_count),
                "swap_every": args.swap_every,
            }
        },
    }
    (args.workdir / "settings.json").write_text(json.dumps(settings))
    (args.workdir / "model-settings.json").write_text(json.dumps(model))
    here = str(Path(__file__).resolve().parent)  # the runtime's module, for every worker
    os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execv(str(mlserver), [str(mlserver), "start", str(args.workdir)])


if __name__ == "__main__":
    main()
