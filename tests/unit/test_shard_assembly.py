"""Shards of one step assembled into one snapshot (``snapshot/shard_assembly.py``): only
complete steps, never two steps' shards together, rows mapped to global ones exactly as
``row_layout.py`` lays them out; shards that do not fit together are refused in one line."""

from __future__ import annotations

import pydantic
import pytest
import torch

from streamtrain.snapshot.delta import ROWS_SUFFIX, split_delta
from streamtrain.snapshot.manifest import SnapshotManifest, TensorInfo, shard_snapshot_id
from streamtrain.snapshot.shard_assembly import ShardAssembly
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot
from streamtrain.snapshot.writer import ShardSpec

ROWS = 7  # odd: shard 0 holds 4 rows, shards 1-2 of 3 hold 2
TABLE = "emb.weight"
WHOLE = torch.arange(ROWS * 2, dtype=torch.float32).reshape(ROWS, 2)
DENSE = torch.tensor([0.5, -1.0])


def _shard(
    index: int,
    world: int,
    version: int,
    tensors: dict[str, torch.Tensor],
    *,
    created_at: float = 1.0,
    predecessor: str | None = None,
    tables: dict[str, int] | None = None,
) -> ReceivedSnapshot:
    spec = ShardSpec(index, world, tables or {TABLE: ROWS})
    manifest = SnapshotManifest(
        model_name="m",
        settings_hash="0" * 64,
        run_id="run",
        version=version,
        created_at=created_at,
        data_watermark=float(index),
        offsets={index: version},
        tensors=[
            TensorInfo(name=n, dtype="float32", shape=list(t.shape)) for n, t in tensors.items()
        ],
        size_bytes=10,
        sha256="0" * 64,
        chunk_count=1,
        chunk_bytes=10,
        first_chunk_offset=0,
        kind="base" if predecessor is None else "delta",
        base_id=None if predecessor is None else "run/1",
        predecessor_id=predecessor,
        shard=spec.info("run", version),
    )
    return ReceivedSnapshot(manifest, tensors)


def _base_shards(world: int, version: int = 1, **kw: float) -> list[ReceivedSnapshot]:
    return [
        _shard(
            r,
            world,
            version,
            {TABLE: WHOLE[r::world].clone(), **({"b": DENSE} if r == 0 else {})},
            **kw,
        )
        for r in range(world)
    ]


def test_a_base_is_the_whole_table_once_every_shard_arrived_in_any_order() -> None:
    assembly = ShardAssembly()
    shards = _base_shards(3)
    assert assembly.offer([shards[2]]) == [] and assembly.offer([shards[0]]) == []
    (done,) = assembly.offer([shards[1]])
    assert isinstance(done, ReceivedSnapshot)
    assert torch.equal(done.tensors[TABLE], WHOLE) and torch.equal(done.tensors["b"], DENSE)
    m = done.manifest
    assert m.shard is None and m.snapshot_id == "run/1" and m.kind == "base"
    assert m.offsets == {0: 1, 1: 1, 2: 1} and m.data_watermark == 2.0
    assert {t.name: t.shape for t in m.tensors} == {"b": [2], TABLE: [ROWS, 2]}


def test_a_delta_carries_every_shards_rows_as_global_rows() -> None:
    local = {0: torch.tensor([0, 3]), 1: torch.tensor([2])}  # global 0, 6 and 5
    shards = [
        _shard(
            r,
            2,
            4,
            {TABLE: WHOLE[r::2][local[r]] + 100, TABLE + ROWS_SUFFIX: local[r]}
            | ({"b": DENSE} if r == 0 else {}),
            predecessor="run/1",
        )
        for r in range(2)
    ]
    (done,) = ShardAssembly().offer(shards)
    assert isinstance(done, ReceivedSnapshot) and done.manifest.kind == "delta"
    dense, rows = split_delta(done.tensors)
    index, values = rows[TABLE]
    assert index.tolist() == [0, 6, 5]
    assert torch.equal(values, WHOLE[[0, 6, 5]] + 100) and torch.equal(dense["b"], DENSE)
    assert done.manifest.predecessor_id == "run/1"


def test_shards_of_two_steps_are_never_one_version() -> None:
    assembly = ShardAssembly()
    first, second = _base_shards(2, 3), _base_shards(2, 3, created_at=2.0)  # same version
    other = _base_shards(2, 4)
    assert assembly.offer([first[0], second[1], other[1]]) == []
    (done,) = assembly.offer([first[1]])
    assert isinstance(done, ReceivedSnapshot) and done.manifest.created_at == 1.0
    assert torch.equal(done.tensors[TABLE], WHOLE)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"predecessor": "run/2"}, "predecessor_id"),
        ({"tables": {TABLE: ROWS, "other": 3}}, "other row-wise tables"),
    ],
)
def test_shards_that_disagree_are_refused_in_one_line(change: dict, words: str) -> None:
    zero = _shard(
        0,
        2,
        5,
        {TABLE: WHOLE[0::2][:1], TABLE + ROWS_SUFFIX: torch.tensor([0])},
        predecessor="run/1",
    )
    kwargs = {"predecessor": "run/1", **change}
    tables = kwargs.pop("tables", None)
    one = _shard(
        1,
        2,
        5,
        {TABLE: WHOLE[1::2][:1], TABLE + ROWS_SUFFIX: torch.tensor([0])},
        tables=tables,
        **kwargs,
    )
    (refused,) = ShardAssembly().offer([zero, one])
    assert isinstance(refused, RejectedSnapshot) and refused.reason == "bad_manifest"
    assert words in refused.detail and "\n" not in refused.detail and refused.version == 5


@pytest.mark.parametrize(
    ("tensors", "words"),
    [
        ({TABLE: WHOLE[1::2], "b": DENSE}, "no row-wise table"),  # a replicated tensor twice
        ({TABLE: WHOLE[1::2][:2]}, "expected 3 of its 7 rows"),
    ],
)
def test_shards_whose_tensors_do_not_fit_are_refused(tensors: dict, words: str) -> None:
    zero = _shard(0, 2, 1, {TABLE: WHOLE[0::2], "b": DENSE})
    (refused,) = ShardAssembly().offer([zero, _shard(1, 2, 1, tensors)])
    assert isinstance(refused, RejectedSnapshot) and words in refused.detail


def test_delta_rows_outside_the_shard_are_refused() -> None:
    shards = [
        _shard(
            r, 2, 2, {TABLE: WHOLE[:1], TABLE + ROWS_SUFFIX: torch.tensor([3])}, predecessor="run/1"
        )
        for r in range(2)
    ]  # shard 1 holds 3 rows: local row 3 is not its
    (refused,) = ShardAssembly().offer(shards)
    assert isinstance(refused, RejectedSnapshot) and "outside its shard" in refused.detail


def test_only_the_newest_incomplete_steps_are_held() -> None:
    assembly = ShardAssembly(keep_steps=2)
    for version in (1, 2, 3):
        assembly.offer([_base_shards(2, version)[0]])
    assert assembly.offer([_base_shards(2, 1)[1]]) == []  # step 1 was dropped: never complete
    (done,) = assembly.offer([_base_shards(2, 3)[1]])
    assert isinstance(done, ReceivedSnapshot) and done.manifest.version == 3


def test_newest_first_yields_complete_steps_and_skips_the_rest() -> None:
    assembly = ShardAssembly()
    newest_first = [_base_shards(2, 9)[1], *_base_shards(2, 8), *_base_shards(2, 7)]
    versions = [s.manifest.version for s in assembly.newest_first(newest_first)]
    assert versions == [8, 7]


def test_a_step_begun_in_a_scan_is_completed_by_the_tail() -> None:
    """A server's startup scan read shard 1 of step 1 while shard 0 was still being written:
    the tail's shard 0 completes the step."""
    assembly = ShardAssembly()
    assert list(assembly.newest_first([_base_shards(2, 1)[1]])) == []
    (done,) = assembly.offer([_base_shards(2, 1)[0]])
    assert isinstance(done, ReceivedSnapshot) and done.manifest.version == 1


def test_a_shard_manifest_names_every_shard_and_an_unsharded_one_is_unchanged() -> None:
    shard = _base_shards(2)[1].manifest
    assert shard.snapshot_id == shard_snapshot_id("run", 1, 1, 2) == "run@shard1of2/1"
    assert shard.header.snapshot_id == "run/1"
    assert SnapshotManifest.model_validate_json(shard.model_dump_json()) == shard
    forged = shard.model_dump(mode="json")
    forged["shard"]["shard_ids"] = ["run@shard0of2/1", "run@shard0of2/1"]
    with pytest.raises(pydantic.ValidationError, match="shard_ids"):
        SnapshotManifest.model_validate(forged)
    plain = shard.model_copy(update={"shard": None})
    assert '"shard"' not in plain.model_dump_json()  # earlier servers read it as before
