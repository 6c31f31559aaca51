"""The checkpoint writer's test-only pause: off unless asked, at the phase and step asked, and
its variables are the suite's own (no unknown-variable warning)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from streamtrain import pause_switch
from streamtrain.checkpoint.pause_hook import MARKER_ENV, PAUSE_ENV, pause_point
from streamtrain.checkpoint.state import TrainerState
from streamtrain.checkpoint.store import CheckpointStore
from streamtrain.config import unknown_env_warnings


def _state(step: int) -> TrainerState:
    return TrainerState(
        step=step, samples_seen=step, run_id="r", offsets={0: step}, model_settings={}
    )


def test_the_variables_are_known_to_the_settings_warning() -> None:
    environ = {PAUSE_ENV: "meta", MARKER_ENV: "/tmp/x", "STREAMTRAIN_PAUSE_IN_CHECKPOINT": "x"}
    warnings = unknown_env_warnings(environ)
    assert len(warnings) == 1 and "STREAMTRAIN_PAUSE_IN_CHECKPOINT " in warnings[0], warnings


def test_a_malformed_value_is_one_line_naming_the_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("rename", "meta:x", "meta:-1"):
        monkeypatch.setenv(PAUSE_ENV, bad)
        with pytest.raises(ValueError, match="expected one of files, meta, committed"):
            pause_point("meta", 1)


def test_the_writer_pauses_only_at_the_asked_phase_and_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "paused"
    monkeypatch.setenv(PAUSE_ENV, "meta:3")
    monkeypatch.setenv(MARKER_ENV, str(marker))
    monkeypatch.setattr(pause_switch, "PAUSE_S", 0.0)  # the writer goes on at once
    store = CheckpointStore(tmp_path / "ckpt", keep=5)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    store.save(_state(2), model, optimizer)
    assert not marker.exists(), "step 2 is below the asked step"
    store.save(_state(4), model, optimizer)
    assert marker.read_text() == "4"


def test_a_pause_holds_the_write_between_its_files_and_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "paused"
    release = threading.Event()
    monkeypatch.setenv(PAUSE_ENV, "meta")
    monkeypatch.setenv(MARKER_ENV, str(marker))
    # the pause lasts until the test has looked (only the hook's own name for time is replaced)
    monkeypatch.setattr(pause_switch, "time", SimpleNamespace(sleep=lambda _: release.wait(30)))
    root = tmp_path / "ckpt"
    store = CheckpointStore(root)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = threading.Thread(target=store.save, args=(_state(7), model, optimizer))
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and writer.is_alive(), "the writer never paused"
            writer.join(0.02)
        assert marker.read_text() == "7"
        pending = [p for p in root.iterdir() if p.name.startswith(".tmp-step-000000000007")]
        assert len(pending) == 1 and (pending[0] / "meta.json").exists()
        assert not (root / "step-000000000007").exists()
    finally:
        release.set()
        writer.join(30)
    assert (root / "step-000000000007" / "meta.json").exists()
