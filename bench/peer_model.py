"""The serving benchmarks' model in plain torch, for the peers that run in their own virtual
environments without streamtrain (bench/kserve_peer.py, bench/mlserver_peer.py).

Same network and outputs as streamtrain's ``mlp`` of bench/serve_model.py with its defaults:
online standardisation (running mean and variance, as in eval mode), ``Linear → ReLU`` per
hidden layer, a 10-class output layer; the head returns softmax probabilities and the argmax.
A swapper thread copies fresh weights into the live model in place every ``swap_every``
seconds while ``swap_flag`` exists (no standby copy, so a request can see half-copied weights:
the simplest thing a user of such a server would write), counting swaps in ``swap_count``.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

FEATURES = 32
CLASSES = 10


class PeerMLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("var", torch.ones(FEATURES))
        self.body = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.flatten(1) - self.mean) / torch.sqrt(self.var + 1e-5)
        return self.out(self.body(x))


class PeerModel:
    """The model, one torch thread, and its optional in-place swapper."""

    def __init__(self, hidden: int) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.model = PeerMLP(hidden).eval()

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities FP32 [n, 10], predicted class INT64 [n]) for ``features`` [n, 32]."""
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(features, np.float32)))
            probabilities = torch.softmax(logits, dim=1)
            return probabilities.numpy(), probabilities.argmax(dim=1).numpy()

    def start_swapper(self, swap_flag: Path, swap_count: Path, swap_every: float) -> None:
        threading.Thread(
            target=self._swapper, args=(swap_flag, swap_count, swap_every), daemon=True
        ).start()

    def _swapper(self, swap_flag: Path, swap_count: Path, swap_every: float) -> None:
        swaps = 0
        fresh = {k: v.clone() for k, v in self.model.state_dict().items()}
        while True:
            time.sleep(swap_every)
            if not swap_flag.exists():
                continue
            with torch.no_grad():
                for name, tensor in self.model.state_dict().items():
                    fresh[name].add_(0.001)
                    tensor.copy_(fresh[name])
            swaps += 1
            swap_count.write_text(str(swaps))


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The options bench/serve.py gives every peer server; a peer adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--swap-flag", type=Path, required=True)
    parser.add_argument("--swap-count", type=Path, required=True)
    parser.add_argument("--swap-every", type=float, default=0.1)
    return parser
