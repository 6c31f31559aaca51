"""Slot rule 6 (``checks.chain_gap``): a delta applies on a live version of its run from its
predecessor up to itself, and on nothing else."""

from __future__ import annotations

import pytest

from streamtrain.serve.weights.checks import chain_gap
from streamtrain.snapshot.manifest import SnapshotHeader


def _delta(version: int, predecessor: str, base: str = "run/0", run: str = "run") -> SnapshotHeader:
    return SnapshotHeader(version, run, base_id=base, predecessor_id=predecessor)


@pytest.mark.parametrize(
    ("live", "delta"),
    [
        (SnapshotHeader(4, "run"), _delta(6, "run/4")),  # its predecessor, a base
        (_delta(4, "run/2"), _delta(6, "run/4", base="run/3")),  # a newer base named
        # A base written beside the deltas (version 5) lies between predecessor 4 and 6.
        (SnapshotHeader(5, "run"), _delta(6, "run/4")),
    ],
)
def test_a_delta_applies_from_its_predecessor_up_to_itself(
    live: SnapshotHeader, delta: SnapshotHeader
) -> None:
    assert chain_gap(live, delta) is None


@pytest.mark.parametrize(
    ("live", "delta"),
    [
        (None, _delta(6, "run/4")),  # nothing live
        (SnapshotHeader(3, "run"), _delta(6, "run/4")),  # rows 3..4 would be missing
        (SnapshotHeader(6, "run"), _delta(6, "run/4")),  # not newer
        (SnapshotHeader(7, "run"), _delta(6, "run/4")),  # older than the live version
        (SnapshotHeader(5, "other"), _delta(6, "run/4")),  # another run's weights
        (SnapshotHeader(5, "run"), _delta(6, "other/4")),  # a predecessor of another run
        (SnapshotHeader(5, "run"), _delta(6, "not-an-id")),  # malformed predecessor
        (SnapshotHeader(5, "run"), SnapshotHeader(6, "run", predecessor_id="run/4")),  # no base
    ],
)
def test_anything_else_is_a_gap(live: SnapshotHeader | None, delta: SnapshotHeader) -> None:
    gap = chain_gap(live, delta)
    assert gap is not None and delta.snapshot_id in gap
