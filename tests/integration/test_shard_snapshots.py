"""Per-rank shard snapshots on the real broker, as a trainer with ``row_wise`` tables writes
them (one signed snapshot per rank and step, ``SnapshotWriter(shard=...)``), and servers
that assemble a version only from every shard of one step (``snapshot/shard_assembly.py``).

A missing shard, a forged one (signed by an untrusted key) and a step whose shards come from
two steps leave the old version serving; a later complete delta whose predecessor is that old
version then goes live, which proves nothing else was served in between (a server on any
other version would have seen a gap). A server that joins late catches up from the newest
complete base and ends bit for bit on the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamtrain.builders.server import build_worker
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.spec import spec_for_model
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from streamtrain.snapshot.writer import ShardSpec, SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.snapshot_harness import rejections, serve_settings, wait
from tests.integration.test_trainer_sharded import MODEL, PARAMS, ROWS, SHARDED

TABLES = dict.fromkeys(SHARDED, ROWS)
RUN = "run-s"


class Shards:
    """Writers of shard 0 and 1 of each step, signed by ``signer``."""

    def __init__(self, bootstrap: str, topic: str, settings_digest: str, signer: ManifestSigner):
        self._writers = [
            SnapshotWriter(
                kafka=KafkaConnection(bootstrap),
                topic=topic,
                model_name=MODEL["name"],
                settings_hash=settings_digest,
                chunk_bytes=16 * 1024,  # several chunks per shard
                signer=signer,
                shard=ShardSpec(rank, 2, TABLES),
            )
            for rank in range(2)
        ]

    def write(
        self,
        rank: int,
        version: int,
        state: dict[str, torch.Tensor],
        *,
        rows: dict[str, torch.Tensor] | None = None,
        created_at: float | None = None,
        predecessor: int | None = None,
    ) -> SnapshotManifest:
        """Rank ``rank``'s shard of ``state`` (whole tables): its rows of each table at their
        local index, plus (rank 0) every other tensor; with ``rows`` (global), a delta."""
        tensors = {}
        local_rows = {}
        for name, tensor in state.items():
            if name not in TABLES:
                if rank == 0:
                    tensors[name] = tensor.clone()
                continue
            mine = tensor[rank::2]
            if rows is None:
                tensors[name] = mine.clone()
            else:
                local = torch.div(rows[name][rows[name] % 2 == rank], 2, rounding_mode="floor")
                tensors[name], local_rows[name] = mine[local].clone(), local
        request = SnapshotRequest(
            version=version,
            run_id=RUN,
            tensors=tensors,
            data_watermark=None,
            offsets={rank: version},
            created_at=float(version) if created_at is None else created_at,
            rows=None if rows is None else local_rows,
        )
        return self._writers[rank].write(
            request, base_id=f"{RUN}/1", predecessor_id=f"{RUN}/{predecessor}"
        )

    def close(self) -> None:
        for writer in self._writers:
            writer.close(5.0)


def _trained(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``state`` moved: every dense tensor, and some rows of each table (global rows)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in state.items():
        moved = tensor.clone()
        if name in TABLES:
            moved[_ROWS] += torch.randn(moved[_ROWS].shape, generator=generator)
        elif moved.is_floating_point():
            moved += torch.randn(moved.shape, generator=generator)
        out[name] = moved
    return out


_ROWS = torch.tensor([0, 1, 2, 7, 500, 1019, 1020])  # both ranks' rows, the last of each


def _served(worker: object) -> dict[str, torch.Tensor]:
    with worker.slot.acquire() as lease:  # type: ignore[attr-defined]
        return {k: v.clone() for k, v in lease.model.state_dict().items()}


def _assert_serves(worker: object, state: dict[str, torch.Tensor]) -> None:
    served = _served(worker)
    assert served.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(served[name], tensor), f"{name} differs"


def _live(worker: object) -> int | None:
    info = worker.slot.info  # type: ignore[attr-defined]
    return None if info is None else int(info.version)


def test_servers_assemble_only_complete_verified_steps_of_one_step(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    topic = unique_name
    create_topics(kafka_bootstrap, [topic])
    keys = {name: generate_key_pair(tmp_path, name) for name in ("trainer", "intruder")}
    settings = serve_settings(
        kafka_bootstrap, topic, model=MODEL, trusted_keys=[keys["trainer"][1]]
    )
    digest = settings_hash(settings.model.model_dump(mode="json"))
    shards = Shards(kafka_bootstrap, topic, digest, ManifestSigner.from_file(keys["trainer"][0]))
    forger = Shards(kafka_bootstrap, topic, digest, ManifestSigner.from_file(keys["intruder"][0]))
    torch.manual_seed(3)
    v1 = build_model("dlrm", spec_for_model(settings.model), PARAMS).state_dict()
    v2, v5 = _trained(v1, 2), _trained(v1, 5)
    worker = build_worker(settings)
    url = worker.start()
    late = None
    try:
        for rank in (1, 0):  # a step is complete whatever order its shards arrive in
            shards.write(rank, 1, v1)
        wait(lambda: _live(worker) == 1, "the assembled base 1 live", timeout_s=60)
        _assert_serves(worker, v1)

        before = rejections(url)
        shards.write(0, 2, v2)  # shard 1 of step 2 never arrives ...
        forger.write(1, 2, v2)  # ... but a forged one does
        wait(
            lambda: rejections(url)["signature"] == before["signature"] + 1,
            "the forged shard refused on /metrics",
        )
        assert _live(worker) == 1
        shards.write(0, 3, v2)  # two steps' shards: never one version
        shards.write(1, 4, v2)
        shards.write(1, 3, v2, created_at=99.0)  # step 3 again, another clock: another step
        # step 5 a delta on version 1 (global rows ``_ROWS``): live only if 1 still was
        changed = dict.fromkeys(TABLES, _ROWS)
        for rank in range(2):
            shards.write(rank, 5, v5, rows=changed, predecessor=1)
        wait(lambda: _live(worker) == 5, "the assembled delta 5 live on version 1", timeout_s=60)
        _assert_serves(worker, v5)
        assert not torch.equal(v5[SHARDED[0]], v1[SHARDED[0]])  # the check could fail

        late = build_worker(settings)  # joins late: catches up from the newest complete base
        late.start()
        wait(lambda: _live(late) == 5, "the late server on version 5", timeout_s=60)
        _assert_serves(late, v5)
    finally:
        worker.stop()
        if late is not None:
            late.stop()
        shards.close()
        forger.close()
