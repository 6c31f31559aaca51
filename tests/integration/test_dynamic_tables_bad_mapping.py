"""A signed delta whose mapping would give an ID two rows, on the real broker: the server refuses
it as ``bad_mapping`` (counted in its metrics), keeps serving the last good version bit for
bit, and takes the next base. (The signature proves who wrote a snapshot, not that a buggy
trainer wrote a mapping that fits.)"""

from __future__ import annotations

from prometheus_client import generate_latest

from streamtrain.metrics.registries import SERVER_REGISTRY
from streamtrain.train.models.dynamic_table import EMPTY
from tests.integration.snapshot_harness import wait
from tests.integration.test_dynamic_tables_serve import DynamicChain, _matches, watch_chain

SLOTS = "embeddings.mappings.t_items.slot_ids"


def _bad_mappings() -> float:
    """The server's refusal count as its /metrics exposition reads it."""
    line = 'streamtrain_serve_rejected_snapshots_total{reason="bad_mapping"}'
    for row in generate_latest(SERVER_REGISTRY).decode().splitlines():
        if row.startswith(line + " "):
            return float(row.rpartition(" ")[2])
    return 0.0


def test_a_delta_giving_an_id_two_rows_is_refused_and_the_last_good_version_serves(
    kafka_bootstrap: str, unique_name: str
) -> None:
    chain, good = DynamicChain.begun(kafka_bootstrap, unique_name)
    forged = chain.take()
    forged.wait_ready()
    ids = forged.tensors[SLOTS]  # the new owners of the delta's mapping rows
    owned = (ids != EMPTY).nonzero().squeeze(1).tolist()
    assert len(owned) >= 2, "the delta changes at least two owned rows"
    ids[owned[1]] = ids[owned[0]]  # two of the delta's rows would own one ID
    before = _bad_mappings()
    chain.write(forged, 0, good.version)
    slot, watcher = watch_chain(kafka_bootstrap, unique_name)
    try:
        wait(lambda: _bad_mappings() == before + 1, "the forged delta refused as bad_mapping")
        assert slot.info is not None and slot.info.version == good.version
        assert _matches(slot, chain.states[good.version])
        chain.repair(slot)
    finally:
        watcher.stop()
