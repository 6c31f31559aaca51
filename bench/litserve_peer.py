"""The LitServe peer for bench/serve.py: the same model behind LitServe, one inference worker.

``decode_request → predict → encode_response`` on streamtrain's own MLP and task head (same
architecture, outputs and JSON reply shape as ``streamtrain serve``), one torch thread, one
API server process and one inference worker (LitServe defaults otherwise; bench/serve.py
passes ``--fast-queue``, its faster ZeroMQ queue). LitServe has no hot swap, so the swap rows
use the simplest thing a user would write: while ``--swap-flag`` exists, a thread in the
worker copies fresh weights into the live model every ``--swap-every`` seconds (no standby
copy, so a request can see half-copied weights) and writes how many swaps it made to
``--swap-count``.

Run by bench/serve.py: ``python bench/litserve_peer.py --port 8001 --swap-flag F --swap-count C``.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import litserve as ls
import torch
from serve_model import API_PATH, model_overrides

from streamtrain.config import load_settings
from streamtrain.sample.spec import spec_for_model
from streamtrain.train.models import build_model
from streamtrain.train.task import TaskHead


class BenchAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, hidden: int, swap_flag: Path, swap_count: Path, swap_every: float) -> None:
        super().__init__(api_path=API_PATH)
        self._hidden = hidden
        self._swap_flag = swap_flag
        self._swap_count = swap_count
        self._swap_every = swap_every

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        settings = load_settings(overrides={"model": model_overrides(self._hidden)})
        spec = spec_for_model(settings.model)
        self.model = build_model("mlp", spec, settings.model.params).eval()
        self.head = TaskHead(spec).predict
        threading.Thread(target=self._swapper, daemon=True).start()

    def _swapper(self) -> None:
        swaps = 0
        fresh = {k: v.clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        while True:
            time.sleep(self._swap_every)
            if not self._swap_flag.exists():
                continue
            with torch.no_grad():
                for name, tensor in self.model.state_dict().items():
                    if name in fresh:
                        fresh[name].add_(0.001)
                        tensor.copy_(fresh[name])
            swaps += 1
            self._swap_count.write_text(str(swaps))

    # LitServe builds its route from these two signatures: an unannotated request is read as
    # JSON (what its own examples do), an unannotated reply is encoded as JSON.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        tensor = request["inputs"][0]
        return torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return self.head(self.model(x))

    def encode_response(self, outputs):  # type: ignore[no-untyped-def]
        probabilities, predicted = outputs["probabilities"], outputs["predicted_class"]
        return {
            "model_name": "bench",
            "model_version": "1",
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": list(probabilities.shape),
                    "datatype": "FP32",
                    "data": probabilities.reshape(-1).tolist(),
                },
                {
                    "name": "predicted_class",
                    "shape": list(predicted.shape),
                    "datatype": "INT64",
                    "data": predicted.tolist(),
                },
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--swap-flag", type=Path, required=True)
    parser.add_argument("--swap-count", type=Path, required=True)
    parser.add_argument("--swap-every", type=float, default=0.1)
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue")
    args = parser.parse_args()
    api = BenchAPI(args.hidden, args.swap_flag, args.swap_count, args.swap_every)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
