"""The background snapshot copy (train/snapshot_copy.py): exact at its step while training
goes on, the training thread never copying the table, and a spoiled copy refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from streamtrain.snapshot.delta import merge_requests
from streamtrain.train.hooks import CopySpoiled, SnapshotRequest
from streamtrain.train.row_copy import RowCopy
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.snapshot_copy import SnapshotCopier, StallClock
from streamtrain.train.weights import take_snapshot
from tests.copy_gate import assert_free_running_copies_stay_exact, copy_gate
from tests.delta_fixtures import model_state

ROWS, DIM = 4000, 8


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=True)
        self.dense = torch.nn.Linear(DIM, 64)
        self.out = torch.nn.Linear(64, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.dense(self.table(ids))))


class _Trainer:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = _Model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        # every tensor in the background (min_bytes 0), in many small chunks
        self.copier = SnapshotCopier(self.model, self.optimizer, chunk_bytes=512, min_bytes=0)
        self.gen = torch.Generator().manual_seed(1)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            ids = torch.randint(0, ROWS, (64, 3), generator=self.gen)
            loss = (self.model(ids) - 1.0).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def state(self) -> dict[str, torch.Tensor]:
        return model_state(self.model)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    with copy_gate(monkeypatch) as events:
        yield events


def test_the_copy_is_the_weights_at_its_step_while_training_goes_on(
    gate: tuple[threading.Event, threading.Event],
) -> None:
    held, release = gate
    trainer = _Trainer()
    trainer.train(3)
    at_step = trainer.state()
    taken = take_snapshot(trainer.model, None, trainer.copier)
    assert taken.rows is None
    assert held.wait(10), "the copy thread never started on the table"
    table = taken.tensors["table.weight"]
    # the training thread returned with the table not yet copied: its copy is not here
    assert not torch.equal(table, at_step["table.weight"])
    trainer.train(40)  # touches rows of chunks not yet copied, and every dense row
    assert not torch.equal(trainer.model.table.weight, at_step["table.weight"])
    release.set()
    taken.wait_ready()
    for name, tensor in at_step.items():
        assert torch.equal(taken.tensors[name], tensor), name
    assert taken.stall.seconds > 0


def test_free_running_copies_stay_exact_over_many_snapshots() -> None:
    assert_free_running_copies_stay_exact(_Trainer(), 5, before=2, during=5)


def test_a_snapshot_taken_while_one_is_copied_waits_for_that_one(
    gate: tuple[threading.Event, threading.Event],
) -> None:
    held, release = gate
    trainer = _Trainer()
    trainer.train(1)
    first_state = trainer.state()
    first = take_snapshot(trainer.model, None, trainer.copier)
    assert held.wait(10)
    trainer.train(4)
    second_state = trainer.state()
    opener = threading.Timer(0.2, release.set)  # opens the gate while the next take waits
    opener.start()
    second = take_snapshot(trainer.model, None, trainer.copier)  # rule 5
    opener.join()
    first.wait_ready()
    for name, tensor in first_state.items():
        assert torch.equal(first.tensors[name], tensor), name
    trainer.train(2)
    second.wait_ready()
    for name, tensor in second_state.items():
        assert torch.equal(second.tensors[name], tensor), name


def test_a_change_outside_a_step_spoils_the_copy_and_the_next_snapshot_is_whole(
    gate: tuple[threading.Event, threading.Event],
) -> None:
    held, release = gate
    trainer = _Trainer()
    tracker = RowTracker(
        trainer.model, trainer.optimizer, base_every_deltas=100, base_every_seconds=1e9
    )
    trainer.train(1)
    taken = take_snapshot(trainer.model, tracker, trainer.copier)
    assert held.wait(10)
    with torch.no_grad():  # a rollback or a checkpoint load: not an optimizer step
        trainer.model.table.weight.add_(1.0)
    trainer.train(1)
    release.set()
    with pytest.raises(CopySpoiled, match=r"table\.weight changed outside an optimizer step"):
        taken.wait_ready()
    # the tracker alone would take a delta now; the spoiled copy makes it whole
    trainer.train(1)
    after = take_snapshot(trainer.model, tracker, trainer.copier)
    assert after.rows is None
    at_step = trainer.state()
    after.wait_ready()
    assert torch.equal(after.tensors["table.weight"], at_step["table.weight"])


def test_a_whole_request_merged_with_a_delta_does_not_wait_for_its_copy() -> None:
    """The offering (training) thread merges; the copy completes on the sink's thread."""
    copied = threading.Event()
    whole = {"t": torch.zeros(4, 2), "b": torch.zeros(1)}

    def wait_for_copy() -> None:
        assert copied.wait(10)
        whole["t"].fill_(1.0)  # what the background copy would have written

    older = SnapshotRequest(1, "r", whole, None, {}, 0.0, wait_ready=wait_for_copy)
    rows = {"t": torch.tensor([2])}
    newer = SnapshotRequest(
        2, "r", {"t": torch.full((1, 2), 5.0), "b": torch.ones(1)}, None, {}, 0.0, rows=rows
    )
    merged = merge_requests(older, newer)  # returns with the copy unfinished
    assert merged.rows is None and merged.version == 2
    copied.set()
    merged.wait_ready()
    merged.wait_ready()  # once only: the rows are not scattered twice
    assert merged.tensors["t"].tolist() == [[1.0, 1.0], [1.0, 1.0], [5.0, 5.0], [1.0, 1.0]]
    assert merged.tensors["b"].tolist() == [1.0]


def test_a_dense_tensor_not_yet_copied_is_saved_whole_before_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with copy_gate(monkeypatch, dense=True) as (held, release):
        trainer = _Trainer()
        trainer.train(1)
        at_step = trainer.state()
        taken = take_snapshot(trainer.model, None, trainer.copier)
        assert held.wait(10)  # the first dense tensor is part-copied
        trainer.train(3)  # every dense row changes
        assert not torch.equal(trainer.model.dense.weight, at_step["dense.weight"])
        release.set()
        taken.wait_ready()
    for name, tensor in at_step.items():
        assert torch.equal(taken.tensors[name], tensor), name


def test_the_row_bitmap_is_made_off_the_training_thread_and_saves_before_it_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-row bitmap (O(rows): the largest pause of a 4 GB first snapshot when the first
    save made it) is made by the copy thread. Steps that run before it exists save a row each
    time they change it; the copy still ends with the row's value at the snapshot step."""
    makers: list[str] = []
    before_bitmap, bitmap_may_go = threading.Event(), threading.Event()
    original = RowCopy.track_saved

    def held_back(self: RowCopy, lock: threading.Lock) -> None:
        makers.append(threading.current_thread().name)
        before_bitmap.set()
        bitmap_may_go.wait(60)
        original(self, lock)

    monkeypatch.setattr(RowCopy, "track_saved", held_back)
    trainer = _Trainer()
    trainer.train(2)
    at_step = trainer.state()
    taken = take_snapshot(trainer.model, None, trainer.copier)
    assert before_bitmap.wait(10), "the copy thread never made the bitmap"
    trainer.train(30)  # hot rows changed by many steps, each saving them again
    background = trainer.copier._job.tensors if trainer.copier._job is not None else []
    table = next(b for b in background if b.name == "table.weight")
    assert table.saved is None
    assert len(table.log_index) > 1  # saved by several steps before any bitmap
    bitmap_may_go.set()
    taken.wait_ready()
    assert makers == ["snapshot-copy"]
    for name, tensor in at_step.items():
        assert torch.equal(taken.tensors[name], tensor), name


def test_a_row_named_twice_in_one_save_is_put_back_once() -> None:
    param = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    target = torch.zeros(6, 2)
    row_copy = RowCopy("t", param, target, sparse=True, version=0, rows_per_chunk=2)
    row_copy.track_saved(threading.Lock())
    row_copy.save(torch.tensor([4, 1, 4, 5]))
    param[[1, 4, 5]] = -1.0  # the step changes them
    row_copy.save(torch.tensor([4, 5]))  # saved already: not saved again
    assert [i.tolist() for i in row_copy.log_index] == [[4, 1, 4, 5]]
    row_copy.copy_rows(0, 6)  # read after the change
    row_copy.undo()
    assert torch.equal(target, torch.arange(12, dtype=torch.float32).reshape(6, 2))


def test_the_stall_clock_sums_pauses_and_keeps_the_longest() -> None:
    clock = StallClock(0.002)
    for seconds in (0.001, 0.004, 0.0005):
        clock.add(seconds)
    assert clock.seconds == pytest.approx(0.0075)
    assert clock.longest == pytest.approx(0.004)
