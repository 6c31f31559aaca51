"""The KServe peer for bench/serve.py: the same model behind KServe's ``ModelServer``.

A ``kserve.Model`` whose ``predict`` takes the v2 (Open Inference Protocol) request KServe
parsed, runs bench/peer_model.py's MLP and answers the same two outputs (probabilities FP32,
predicted class INT64) as streamtrain; served by ``kserve.ModelServer`` with one worker, its
REST endpoint only (gRPC off), one torch thread. Runs in its own virtual environment
(``make bench-peers``: bench/.peers/kserve), where KServe's pins do not meet ours. Swap rows:
while ``--swap-flag`` exists a thread copies fresh weights into the live model every
``--swap-every`` seconds (bench/peer_model.py), counting them in ``--swap-count``.

Run by bench/serve.py: ``bench/.peers/kserve/bin/python bench/kserve_peer.py --port 8002 ...``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from peer_model import PeerModel, peer_arguments


class BenchModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, hidden: int) -> None:
        super().__init__(name)
        self.peer = PeerModel(hidden)
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return True

    async def predict(
        self, payload: InferRequest, headers: Any = None, response_headers: Any = None
    ) -> InferResponse:
        features = payload.inputs[0].as_numpy()
        probabilities, predicted = self.peer.predict(features)
        outputs = []
        for name, datatype, values in (
            ("probabilities", "FP32", probabilities),
            ("predicted_class", "INT64", predicted),
        ):
            output = InferOutput(name=name, shape=list(values.shape), datatype=datatype)
            output.set_data_from_numpy(values, binary_data=False)
            outputs.append(output)
        # KServe's response requires an id; a request without one gets a fresh one.
        response_id = payload.id or str(uuid.uuid4())
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=response_id)


def main() -> None:
    parser = peer_arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    model = BenchModel("bench", args.hidden)
    model.peer.start_swapper(args.swap_flag, args.swap_count, args.swap_every)
    server = kserve.ModelServer(
        http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    # As streamtrain's server: warnings only, no line per request (KServe logs each at INFO).
    for name in ("kserve", "kserve.trace", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
