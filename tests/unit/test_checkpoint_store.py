"""CheckpointStore: layout, atomicity, pruning, validation of what is read back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from streamtrain import metrics
from streamtrain.checkpoint import CheckpointError, CheckpointStore, TrainerState


def _model(seed: int = 0, out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, out))


def _opt(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01)


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(3, 4)).pow(2).mean().backward()
    opt.step()


def _state(step: int, **kw: object) -> TrainerState:
    fields: dict[str, object] = {
        "step": step,
        "samples_seen": step * 10,
        "run_id": "run-a",
        "offsets": {0: step * 5, 3: step * 5 + 1},
        "model_settings": {"name": "mlp", "hidden": [8]},
    }
    fields.update(kw)
    return TrainerState(**fields)  # type: ignore[arg-type]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_roundtrip_of_trainer_state_and_layout(tmp_path: Path) -> None:
    model = _model()
    opt = _opt(model)
    _step(model, opt)
    state = _state(
        12, data_watermark=1_700_000_000.25, extra={"note": "x", "nested": {"a": [1, 2.5]}}
    )
    path = CheckpointStore(tmp_path).save(state, model, opt)

    assert path == tmp_path / "step-000000000012"
    names = {p.name for p in path.iterdir()}
    assert names == {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "rng.safetensors",
        "meta.json",
    }
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == names - {"meta.json"}
    assert meta["format"] == 1 and meta["offsets"] == {"0": 60, "3": 61}
    assert CheckpointStore(tmp_path).latest_path() == path

    restored = CheckpointStore(tmp_path).load_latest(_model(5), _opt(_model(5)))
    assert restored == state  # offsets come back with int keys
    assert list(restored.offsets) == [0, 3]


def test_empty_root_has_nothing_to_load(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "new")
    model = _model()
    assert store.load_latest(model, _opt(model)) is None
    assert store.latest_path() is None


def test_pruning_keeps_the_newest_k(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    model = _model()
    opt = _opt(model)
    for step in (1, 2, 3, 9, 10):
        store.save(_state(step), model, opt)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-"))
    assert kept == ["step-000000000009", "step-000000000010"]


def test_checkpoints_past_the_one_written_are_set_aside_not_pruned_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    model = _model()
    opt = _opt(model)
    store.save(_state(5), model, opt)
    store.save(_state(10), model, opt)
    # Step 10 turned out unusable, the trainer resumed from an older one and now writes step 7.
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        written = store.save(_state(7), model, opt)
    assert store.latest_path() == written
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith(".abandoned-step-000000000010-")
    assert names[1:] == [".lock", "step-000000000007"]
    assert "abandoned run" in caplog.text
    restored = store.load_latest(model, opt)
    assert restored is not None and restored.step == 7


def test_torn_and_corrupt_checkpoints_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path, keep=10)
    model = _model()
    opt = _opt(model)
    _step(model, opt)
    good = store.save(_state(1), model, opt)
    good_weights = _weights(model)
    for step in (2, 3, 4):
        _step(model, opt)
        store.save(_state(step), model, opt)
    # step 2: a model file cut short; step 3: meta.json torn; step 4: a file missing.
    model_file = tmp_path / "step-000000000002" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    meta_file = tmp_path / "step-000000000003" / "meta.json"
    meta_file.write_bytes(meta_file.read_bytes()[:50])
    (tmp_path / "step-000000000004" / "optimizer.json").unlink()
    # A save that crashed before its rename: a temp dir with partial files.
    crashed = tmp_path / ".tmp-step-000000000005-deadbeef"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"\x00" * 10)

    fresh = _model(9)
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        restored = store.load_latest(fresh, _opt(fresh))

    assert restored is not None and restored.step == 1
    assert _same_weights(fresh, good_weights)
    # latest_path is the cheap check (meta parses, files exist): it cannot see the truncation.
    assert store.latest_path() == tmp_path / "step-000000000002" != good
    text = caplog.text
    assert "step-000000000002" in text and "sha256" in text
    assert "step-000000000003" in text and "not valid JSON" in text
    assert "step-000000000004" in text and "optimizer.json: missing" in text
    assert not crashed.exists()


def _rewrite_meta(path: Path, **changes: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"format": 99}, "checkpoint format 99"),
        ({"step": "7"}, "step: Input should be a valid integer"),
        ({"offsets": {"p0": 3}}, "partition 'p0' is not a non-negative integer"),
        ({"files": {"model.safetensors": "abc"}}, "files.model.safetensors"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"files": {"../../etc/passwd": "0" * 64}}, "lists no checksum for ['model.safetensors'"),
    ],
)
def test_invalid_meta_is_rejected_naming_file_and_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, object], expected: str
) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    opt = _opt(model)
    path = store.save(_state(7), model, opt)
    _rewrite_meta(path, **changes)
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        assert store.load_latest(model, opt) is None
    assert f"{path / 'meta.json'}" in caplog.text
    assert expected in caplog.text


def test_meta_listing_files_outside_the_checkpoint_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    path = store.save(_state(7), model, _opt(model))
    files = json.loads((path / "meta.json").read_text())["files"]
    _rewrite_meta(path, files={**files, "../../etc/passwd": "0" * 64})
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        assert store.load_latest(model, _opt(model)) is None
    assert "lists unknown files ['../../etc/passwd']" in caplog.text
    assert store.latest_path() is None


def test_meta_for_another_step_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    path = store.save(_state(7), model, _opt(model))
    path.rename(tmp_path / "step-000000000009")
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        assert store.load_latest(model, _opt(model)) is None
    assert "records step 7, directory says 9" in caplog.text


def test_mismatched_model_is_skipped_and_left_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    store.save(_state(1), model, _opt(model))
    other = _model(seed=3, out=3)
    other_opt = _opt(other)
    before = _weights(other)
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        assert store.load_latest(other, other_opt) is None
    assert "does not match this model" in caplog.text and "'2.weight'" in caplog.text
    assert _same_weights(other, before)
    assert other_opt.state_dict()["state"] == {}


def test_other_optimizer_class_or_missing_scheduler_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    store.save(_state(1), model, _opt(model))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with caplog.at_level(logging.WARNING, logger="streamtrain.checkpoint"):
        assert store.load_latest(model, sgd) is None
        adam = _opt(model)
        sched = torch.optim.lr_scheduler.StepLR(adam, 2)
        assert store.load_latest(model, adam, sched) is None
    assert "state of a 'Adam', but the object to restore is a 'SGD'" in caplog.text
    assert "holds no LR scheduler state" in caplog.text


def test_tied_weights_save_and_stay_tied(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    store = CheckpointStore(tmp_path)
    store.save(_state(1), model, opt)
    fresh = Tied()
    assert store.load_latest(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1)) is not None
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight


def test_same_step_is_replaced_and_an_interrupted_replace_recovers(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    opt = _opt(model)
    store.save(_state(5), model, opt)
    _step(model, opt)
    path = store.save(_state(5, run_id="second"), model, opt)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock")] == [path.name]
    fresh = _model(1)
    restored = store.load_latest(fresh, _opt(fresh))
    assert restored is not None and restored.run_id == "second"
    assert _same_weights(fresh, _weights(model))

    # Crash between "move old aside" and "rename new into place": the old one comes back.
    aside = tmp_path / ".replaced-step-000000000005-0123abcd"
    path.rename(aside)
    restored = store.load_latest(fresh, _opt(fresh))
    assert restored is not None and restored.run_id == "second"
    assert path.is_dir() and not aside.exists()


def test_bad_trainer_state_fails_before_writing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    model = _model()
    opt = _opt(model)
    with pytest.raises(CheckpointError, match="offsets must map int partitions"):
        store.save(_state(1, offsets={"0": 1}), model, opt)
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        store.save(_state(1, extra={"when": object()}), model, opt)
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        store.save(_state(1, model_settings={"lr": float("nan")}), model, opt)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    with pytest.raises(ValueError, match="keep at least 1"):
        CheckpointStore(tmp_path, keep=0)


def test_no_file_is_a_pickle_and_no_code_mentions_one(tmp_path: Path) -> None:
    model = _model()
    opt = _opt(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9**e)
    path = CheckpointStore(tmp_path).save(_state(1), model, opt, sched)
    for file in path.iterdir():
        data = file.read_bytes()
        assert data[:1] != b"\x80", file
        if file.suffix == ".json":
            json.loads(data)
    package = Path(__file__).parents[2] / "streamtrain"
    sources = [*package.glob("checkpoint*/**/*.py")]
    assert len(sources) >= 5
    for source in sources:
        text = source.read_text()
        assert "pickle" not in text.lower() and "torch.load" not in text, source


def _sample(name: str) -> float:
    value = metrics.TRAINER_REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_save_updates_metrics(tmp_path: Path) -> None:
    written = _sample("streamtrain_checkpoints_total")
    timed = _sample("streamtrain_checkpoint_seconds_count")
    model = _model()
    CheckpointStore(tmp_path).save(_state(1), model, _opt(model))
    assert _sample("streamtrain_checkpoints_total") == written + 1
    assert _sample("streamtrain_checkpoint_seconds_count") == timed + 1
    assert _sample("streamtrain_checkpoint_seconds_sum") > 0
