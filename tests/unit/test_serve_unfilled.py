"""serve/weights/unfilled.py: a serving model is built without its random initial draws, in the
building thread only, and keeps the values its constructor sets by other means."""

from __future__ import annotations

import os
import threading

import torch
from torch import nn

from streamtrain.serve.weights.unfilled import initial_draws_skipped

_TABLE_ROWS, _TABLE_DIM = 1 << 20, 64  # 256 MiB of fp32


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.positions: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("positions", torch.arange(6, dtype=torch.float32))
        self.register_buffer("scale", torch.empty(3), persistent=False)
        nn.init.constant_(self.scale, 2.5)
        nn.init.zeros_(self.linear.bias)


def test_a_model_built_inside_draws_nothing_and_one_built_outside_does() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with initial_draws_skipped():
        nn.Sequential(nn.Linear(64, 32), nn.EmbeddingBag(100, 8), nn.Conv1d(2, 2, 3))
    assert torch.equal(torch.get_rng_state(), before)  # not one value drawn
    nn.Linear(64, 32)
    assert not torch.equal(torch.get_rng_state(), before)  # outside, the draws are back


def test_values_set_without_drawing_are_kept() -> None:
    with initial_draws_skipped():
        model = _WithBuffers()
    assert torch.equal(model.positions, torch.arange(6, dtype=torch.float32))
    assert torch.equal(model.scale, torch.full((3,), 2.5))  # a buffer no snapshot carries
    assert torch.equal(model.linear.bias, torch.zeros(4))


def test_another_thread_building_meanwhile_still_draws() -> None:
    torch.manual_seed(7)
    expected = nn.Linear(16, 16).weight.detach().clone()
    built: list[torch.Tensor] = []

    def trainer_thread() -> None:
        torch.manual_seed(7)
        built.append(nn.Linear(16, 16).weight.detach().clone())

    with initial_draws_skipped():
        worker = threading.Thread(target=trainer_thread)
        worker.start()
        worker.join(60)
    assert built and torch.equal(built[0], expected)


def test_a_skipped_table_costs_no_memory_until_written() -> None:
    table_bytes = _TABLE_ROWS * _TABLE_DIM * 4
    start = _rss()
    with initial_draws_skipped():
        skipped = nn.EmbeddingBag(_TABLE_ROWS, _TABLE_DIM, sparse=True)
    assert _rss() - start < table_bytes // 4
    del skipped
    start = _rss()
    drawn = nn.EmbeddingBag(_TABLE_ROWS, _TABLE_DIM, sparse=True)
    assert _rss() - start > table_bytes // 2  # drawn, every page is touched
    del drawn
