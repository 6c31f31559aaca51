"""The catch-up order a server reads the topic in (snapshot/scan.py, catch_up_plan): the
newest base it wants first, the deltas after it oldest first, then the rest newest first."""

from __future__ import annotations

from typing import Literal

from streamtrain.snapshot.scan import Candidate, catch_up_plan
from tests.manifest_fixtures import placeholder_manifest


def _candidate(version: int, kind: Literal["base", "delta"]) -> Candidate:
    chained = None if kind == "base" else "run/1"
    manifest = placeholder_manifest(
        "run",
        version,
        created_at=float(version),
        kind=kind,
        base_id=chained,
        predecessor_id=chained,
    )
    return Candidate(manifest, offset=version, raw=b"", signature=None)


# newest first, as the scan sorts them: base 6 with deltas 7-9 after it, base 3 before
TOPIC = [
    _candidate(9, "delta"),
    _candidate(8, "delta"),
    _candidate(7, "delta"),
    _candidate(6, "base"),
    _candidate(5, "delta"),
    _candidate(3, "base"),
    _candidate(2, "delta"),
]


def _versions(plan: list[Candidate]) -> list[int]:
    return [c.manifest.version for c in plan]


def test_the_newest_base_comes_first_then_its_deltas_oldest_first() -> None:
    assert _versions(catch_up_plan(TOPIC, lambda order: True)) == [6, 7, 8, 9, 5, 3, 2]


def test_a_live_version_past_every_base_reads_the_deltas_newest_first() -> None:
    live_order = TOPIC[2].manifest.order  # delta 7 is live: base 6 is not wanted
    plan = catch_up_plan(TOPIC, lambda order: order > live_order)
    assert _versions(plan) == [9, 8, 7, 6, 5, 3, 2]  # the reader skips what is not wanted


def test_a_topic_without_a_base_is_read_newest_first() -> None:
    deltas = [c for c in TOPIC if c.manifest.kind == "delta"]
    assert _versions(catch_up_plan(deltas, lambda order: True)) == [9, 8, 7, 5, 2]
