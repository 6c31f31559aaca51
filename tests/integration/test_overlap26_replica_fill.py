"""A new replica's base written into its standby as the chunks arrive (issue 26), on a real
server and the real broker: the fill is what made it ready (``/metrics``), it serves the
trainer's weights bit for bit, and a bad chunk mid-way, a missing chunk or a bad signature
leave a replica with nothing better not ready (503) while a later good base still loads."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.metrics import SERVE_STREAMED_LOADS
from streamtrain.serve.server import ServingWorker
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.payload import encode_state, sha256_hex, split_chunks
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from tests.integration.snapshot_harness import (
    forged,
    ready,
    rejections,
    send_chunks,
    send_manifest,
    serve_settings,
    served_version,
    wait,
    weights,
)
from tests.metrics_scrape import current

CHUNK = 16  # a linear model's payload is ~170 bytes: about 11 chunks


def _trained(settings: Settings, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(t.shape, generator=generator, dtype=t.dtype)
        for name, t in weights(settings, 1).items()
    }


def _publish(
    settings: Settings,
    tensors: dict[str, torch.Tensor],
    version: int,
    bend: str = "intact",
    signer: ManifestSigner | None = None,
) -> None:
    """A base in ``CHUNK``-byte chunks (each with its own sha256), then its manifest; bent:
    ``altered`` (a byte of a middle chunk flipped after hashing), ``missing`` (a middle chunk
    never written), ``forged`` (signed, one signature byte flipped)."""
    payload, infos = encode_state(tensors)
    pieces = [bytes(p) for p in split_chunks(payload, CHUNK)]
    sends = [(i, p, sha256_hex(p)) for i, p in enumerate(pieces)]
    middle = len(sends) // 2
    if bend == "altered":
        flipped = bytearray(pieces[middle])
        flipped[2] ^= 0xFF
        sends[middle] = (middle, bytes(flipped), sends[middle][2])
    elif bend == "missing":
        del sends[middle]
    sid = f"run/{version}"
    topic = settings.topics.snapshots
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    try:
        first = send_chunks(producer, topic, "linear", sid, sends, len(pieces))
        manifest = SnapshotManifest(
            model_name="linear",
            settings_hash=settings_hash(settings.model.model_dump(mode="json")),
            run_id="run", version=version, created_at=time.time(), data_watermark=None,
            offsets={}, tensors=infos, size_bytes=len(payload), sha256=sha256_hex(payload),
            chunk_count=len(pieces), chunk_bytes=CHUNK,
            first_chunk_offset=first,
        )  # fmt: skip
        value = manifest.model_dump_json().encode()
        signature = None if signer is None else signer.sign(value)
        if bend == "forged" and signature is not None:
            signature = forged(signature)
        send_manifest(producer, topic, "linear", sid, value, signature)
    finally:
        producer.close(5)


def _streamed_loads(url: str) -> float:
    """``streamtrain_serve_streamed_loads_total`` as scraped from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5, follow_redirects=True).text
    for family in text_string_to_metric_families(text):
        if family.name == "streamtrain_serve_streamed_loads":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def _serves_exactly(worker: ServingWorker, tensors: dict[str, torch.Tensor]) -> bool:
    with worker.slot.acquire() as lease:
        held = lease.model.state_dict()
        return all(torch.equal(held[k], tensors[k]) for k in tensors)


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> Settings:
    create_topics(kafka_bootstrap, [unique_name])
    return serve_settings(kafka_bootstrap, unique_name)


def _replica(settings: Settings) -> tuple[ServingWorker, str]:
    worker = build_worker(settings)
    return worker, worker.start()


def test_a_new_replica_loads_its_base_as_it_reads_it(settings: Settings) -> None:
    trained = _trained(settings, 1)
    _publish(settings, trained, 1)
    before = current(SERVE_STREAMED_LOADS)  # this process's: other tests here may have loaded
    worker, url = _replica(settings)
    try:
        wait(lambda: served_version(url) == "1", "version 1 served")
        assert _streamed_loads(url) == before + 1  # ready through the fill, no copy after
        assert _serves_exactly(worker, trained)  # the trainer's weights, bit for bit
    finally:
        worker.stop()


@pytest.mark.parametrize("bend", ["altered", "missing"])
def test_a_bad_base_midway_falls_back_and_nothing_of_it_is_served(
    settings: Settings, bend: str
) -> None:
    """The newest base is filled first and fails mid-way (its chunk or its sha256): the
    replica falls back to the base before it, filled again over what the bad one wrote."""
    good, bad = _trained(settings, 1), _trained(settings, 2)
    _publish(settings, good, 1)
    _publish(settings, bad, 2, bend)
    before = current(SERVE_STREAMED_LOADS)
    worker, url = _replica(settings)
    try:
        reason = {"altered": "checksum", "missing": "incomplete"}[bend]
        wait(lambda: served_version(url) == "1", "version 1 served after version 2 failed")
        wait(lambda: rejections(url).get(reason, 0.0) >= 1, f"version 2 rejected ({reason})")
        assert _streamed_loads(url) == before + 1  # version 1, filled after version 2's fill
        assert _serves_exactly(worker, good)  # nothing of version 2 left
    finally:
        worker.stop()


@pytest.mark.parametrize("bend", ["altered", "missing"])
def test_a_replica_with_only_a_bad_base_stays_not_ready_then_loads_a_good_one(
    settings: Settings, bend: str
) -> None:
    _publish(settings, _trained(settings, 1), 1, bend)
    worker, url = _replica(settings)
    try:
        reason = {"altered": "checksum", "missing": "incomplete"}[bend]
        wait(lambda: rejections(url).get(reason, 0.0) >= 1, f"version 1 rejected ({reason})")
        assert not ready(url)  # 503: nothing verified to serve
        assert served_version(url) is None
        good = _trained(settings, 2)
        _publish(settings, good, 2)
        wait(lambda: served_version(url) == "2", "version 2 served")
        assert _serves_exactly(worker, good)
    finally:
        worker.stop()


def test_a_forged_signature_is_never_filled_or_served(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    private, public, _ = generate_key_pair(tmp_path, "trainer")
    settings = serve_settings(kafka_bootstrap, unique_name, trusted_keys=[public])
    signer = ManifestSigner.from_file(private)
    good, forged = _trained(settings, 1), _trained(settings, 2)
    _publish(settings, good, 1, signer=signer)
    _publish(settings, forged, 2, "forged", signer=signer)
    worker, url = _replica(settings)
    try:
        wait(lambda: served_version(url) == "1", "signed version 1 served")
        wait(lambda: rejections(url).get("signature", 0.0) >= 1, "version 2 refused (signature)")
        assert _serves_exactly(worker, good)
        _publish(settings, _trained(settings, 3), 3, "forged", signer=signer)
        wait(lambda: rejections(url).get("signature", 0.0) >= 2, "version 3 refused (signature)")
        assert served_version(url) == "1" and _serves_exactly(worker, good)
    finally:
        worker.stop()
