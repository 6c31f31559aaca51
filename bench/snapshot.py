"""Snapshot publish and receive throughput on the embedded broker.

Run: ``.venv/bin/python bench/snapshot.py [--sizes-mb 1 10 50] [--repeats 3]``

For each state size it publishes ``repeats`` snapshots with :class:`SnapshotPublisher` (timed from
``offer`` to ``flush`` returning: serialize + sha256 + produce every chunk + manifest) while a
:class:`SnapshotSubscriber` tails the topic (timed from the end of the publish to the verified
tensors: fetch, reassemble, sha256, safetensors decode). Then a fresh subscriber times
``latest()`` (scan + read + verify). Figures are medians. Publishing is signed and receiving
verifies the signature (Ed25519, a throwaway key), as in production with keys configured.

Separately it times signing and verifying one manifest of each state (``sign µs``,
``verify µs``: mean of 2000 calls): the signature covers the manifest only, which commits to
the payload's sha256, so its cost does not grow with the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot import (
    SnapshotManifest,
    SnapshotPublisher,
    SnapshotSubscriber,
    settings_hash,
)
from streamtrain.snapshot.payload import encode_state, sha256_hex
from streamtrain.snapshot.signing import ManifestSigner, ManifestVerifier
from streamtrain.snapshot.verify import ReceivedSnapshot
from streamtrain.train.hooks import SnapshotRequest

HASH = settings_hash({"bench": True})
KEY = Ed25519PrivateKey.generate()
SIGNER = ManifestSigner(KEY)
VERIFIER = ManifestVerifier([KEY.public_key()], "require")
SIGN_CALLS = 2000


def _state(megabytes: float) -> dict[str, torch.Tensor]:
    floats = int(megabytes * 1_000_000 / 4)
    cols = 1024
    return {"weight": torch.randn(floats // cols, cols), "bias": torch.randn(cols)}


def _request(version: int, state: dict[str, torch.Tensor]) -> SnapshotRequest:
    return SnapshotRequest(
        version=version,
        run_id="bench",
        tensors=state,
        data_watermark=None,
        offsets={},
        created_at=time.time(),
    )


def _wait_received(sub: SnapshotSubscriber, version: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in sub.poll(timeout_s=1.0):
            if not isinstance(item, ReceivedSnapshot):
                raise RuntimeError(f"snapshot rejected: {item}")
            if item.manifest.version == version:
                return
    raise TimeoutError(f"version {version} not received within {timeout} s")


def bench_size(bootstrap: str, megabytes: float, repeats: int) -> tuple[float, float, float, int]:
    topic = f"bench-snapshot-{megabytes:g}mb"
    options = KafkaConnection(bootstrap)
    state = _state(megabytes)
    size = sum(t.numel() * t.element_size() for t in state.values())
    publisher = SnapshotPublisher(
        kafka=options, topic=topic, model_name="bench", settings_hash=HASH, signer=SIGNER
    )
    sub = SnapshotSubscriber(kafka=options, topic=topic, settings_hash=HASH, verifier=VERIFIER)
    sub.latest(timeout_s=5)
    publish, receive = [], []
    for version in range(1, repeats + 1):
        started = time.perf_counter()
        publisher.offer(_request(version, state))
        if not publisher.flush(120):
            raise TimeoutError("publish did not finish")
        published = time.perf_counter()
        _wait_received(sub, version)
        publish.append(published - started)
        receive.append(time.perf_counter() - published)
    publisher.close()
    sub.close()
    late = SnapshotSubscriber(kafka=options, topic=topic, settings_hash=HASH, verifier=VERIFIER)
    started = time.perf_counter()
    found = late.latest(timeout_s=120)
    latest_s = time.perf_counter() - started
    late.close()
    if found is None or found.manifest.version != repeats:
        raise RuntimeError("latest() did not find the newest snapshot")
    return statistics.median(publish), statistics.median(receive), latest_s, size


def signing_cost(megabytes: float) -> tuple[int, float, float, float]:
    """Manifest bytes, µs to sign it, µs to verify it, and ms to sha256 the payload (contrast)."""
    payload, infos = encode_state(_state(megabytes))
    started = time.perf_counter()
    digest = sha256_hex(payload)
    sha_ms = (time.perf_counter() - started) * 1000
    manifest = SnapshotManifest(
        model_name="bench",
        settings_hash=HASH,
        run_id="bench",
        version=1,
        created_at=time.time(),
        data_watermark=None,
        offsets={0: 1},
        tensors=infos,
        size_bytes=len(payload),
        sha256=digest,
        chunk_count=-(-len(payload) // (512 * 1024)),
        chunk_bytes=512 * 1024,
        first_chunk_offset=0,
    )
    raw = manifest.model_dump_json().encode()
    started = time.perf_counter()
    for _ in range(SIGN_CALLS):
        header = SIGNER.sign(raw)
    sign_us = (time.perf_counter() - started) / SIGN_CALLS * 1e6
    started = time.perf_counter()
    for _ in range(SIGN_CALLS):
        problem = VERIFIER.check(raw, header)
    verify_us = (time.perf_counter() - started) / SIGN_CALLS * 1e6
    if problem is not None:
        raise RuntimeError(problem)
    return len(raw), sign_us, verify_us, sha_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 50])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        broker.create_topics(f"bench-snapshot-{mb:g}mb" for mb in args.sizes_mb)
        print(
            f"{'state':>8} {'publish s':>10} {'MB/s':>8} {'receive s':>10} {'MB/s':>8} "
            f"{'latest() s':>11} {'MB/s':>8}"
        )
        for mb in args.sizes_mb:
            pub_s, recv_s, latest_s, size = bench_size(broker.bootstrap_servers, mb, args.repeats)
            megabytes = size / 1e6
            print(
                f"{megabytes:>6.1f}MB {pub_s:>10.3f} {megabytes / pub_s:>8.1f} {recv_s:>10.3f} "
                f"{megabytes / recv_s:>8.1f} {latest_s:>11.3f} {megabytes / latest_s:>8.1f}"
            )
    print(f"\n{'state':>8} {'manifest B':>11} {'sign µs':>8} {'verify µs':>10} {'sha256 ms':>10}")
    for mb in args.sizes_mb:
        manifest_bytes, sign_us, verify_us, sha_ms = signing_cost(mb)
        print(f"{mb:>6g}MB {manifest_bytes:>11} {sign_us:>8.1f} {verify_us:>10.1f} {sha_ms:>10.2f}")


if __name__ == "__main__":
    main()
