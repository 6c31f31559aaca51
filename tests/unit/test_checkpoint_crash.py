"""A save that dies part-way never yields a checkpoint that load could mistake for valid."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from streamtrain.checkpoint import CheckpointStore, TrainerState
from streamtrain.checkpoint.files import write_durable


def _objects() -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _state(step: int) -> TrainerState:
    return TrainerState(step, step, "r", {0: step}, {})


_CRASHING_SAVE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    from streamtrain.checkpoint import CheckpointStore, TrainerState
    from streamtrain.checkpoint import store

    real = store.write_durable
    written = []

    def dying_write(directory, name, data):
        digest = real(directory, name, data)
        written.append(name)
        if len(written) == int(sys.argv[2]):
            os._exit(9)  # like kill -9: no cleanup, no finally blocks
        return digest

    store.write_durable = dying_write
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    CheckpointStore(Path(sys.argv[1])).save(TrainerState(2, 2, "r", {0: 2}, {}), model, opt)
    """
)


def test_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    # The worst moment: every file, meta.json included, is written; only the rename is missing.
    # (A temp dir with partial files is covered without a subprocess in test_checkpoint_store.)
    die_after_files = 5
    model, opt = _objects()
    good = CheckpointStore(tmp_path).save(_state(1), model, opt)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_SAVE, str(tmp_path), str(die_after_files)],
        capture_output=True,
        timeout=400,  # a hang's limit only: the child imports PyTorch (slow under load)
    )
    assert proc.returncode == 9, proc.stderr.decode()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and len(list(leftovers[0].iterdir())) == die_after_files

    store = CheckpointStore(tmp_path)
    assert store.latest_path() == good
    fresh = nn.Linear(4, 2)
    restored = store.load_latest(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert restored is not None and restored.step == 1
    assert torch.equal(fresh.weight, model.weight)
    assert not leftovers[0].exists()


def test_failing_save_cleans_up_and_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt = _objects()
    store = CheckpointStore(tmp_path)
    good = store.save(_state(1), model, opt)
    real = write_durable

    def full_disk(directory: Path, name: str, data: bytes) -> str:
        if name == "optimizer.json":
            raise OSError(28, "No space left on device")
        return real(directory, name, data)

    monkeypatch.setattr("streamtrain.checkpoint.store.write_durable", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.save(_state(2), model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", good.name]
