"""Signed snapshots on the real broker: only a trusted key makes a server swap."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from tests.integration.snapshot_harness import (
    publish,
    ready,
    rejections,
    serve_settings,
    served_version,
    wait,
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    return {name: generate_key_pair(tmp_path, name) for name in ("trainer", "next", "intruder")}


def test_only_snapshots_signed_by_a_trusted_key_are_served(
    kafka_bootstrap: str,
    unique_name: str,
    keys: dict[str, tuple[Path, Path, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name, trusted_keys=[keys["trainer"][1]])
    assert settings.serve.effective_signature_policy == "require"
    trainer = ManifestSigner.from_file(keys["trainer"][0])
    intruder = ManifestSigner.from_file(keys["intruder"][0])
    worker = build_worker(settings)
    url = worker.start()
    try:
        publish(settings, 5, signer=trainer)
        wait(lambda: served_version(url) == "5", "signed version 5")
        before = rejections(url).get("signature", 0.0)

        publish(settings, 6, signer=intruder)  # re-signed with another key
        publish(settings, 7)  # unsigned
        publish(settings, 8, signer=trainer, tamper="signature")  # one flipped signature bit
        publish(settings, 9, signer=trainer, tamper="manifest")  # one changed manifest byte
        wait(lambda: rejections(url).get("signature", 0.0) - before == 4, "4 signature rejections")
        assert served_version(url) == "5"  # the server kept its version throughout

        publish(settings, 10, signer=trainer)
        wait(lambda: served_version(url) == "10", "the next signed version")
    finally:
        worker.stop()

    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "streamtrain.serve.weights.watcher" and "(signature)" in r.getMessage()
    ]
    assert len(refused) == 4, refused  # each logged once
    assert [v for v in (6, 7, 8, 9) if any(f"version {v} " in m for m in refused)] == [6, 7, 8, 9]
    assert any(keys["intruder"][2] in m and "not trusted" in m for m in refused)
    assert sum("does not verify" in m for m in refused) == 2
    for private_path, _, _ in keys.values():  # no key material anywhere in the logs
        body = "".join(private_path.read_text().splitlines()[1:-1])
        assert body not in caplog.text


def test_rotation_accepts_both_keys_and_off_accepts_unsigned(
    kafka_bootstrap: str, unique_name: str, keys: dict[str, tuple[Path, Path, str]]
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    both = [keys["trainer"][1], keys["next"][1]]
    settings = serve_settings(kafka_bootstrap, unique_name, trusted_keys=both)
    worker = build_worker(settings)
    url = worker.start()
    try:
        publish(settings, 3, signer=ManifestSigner.from_file(keys["trainer"][0]))
        wait(lambda: served_version(url) == "3", "version 3 signed by the old key")
        publish(settings, 4, signer=ManifestSigner.from_file(keys["next"][0]))
        wait(lambda: served_version(url) == "4", "version 4 signed by the new key")
        publish(settings, 5)  # unsigned: still refused while keys are configured
        wait(lambda: rejections(url).get("signature", 0.0) >= 1, "the unsigned one refused")
        assert served_version(url) == "4"
    finally:
        worker.stop()

    # policy off: today's behaviour, the newest (unsigned) snapshot is taken.
    off = serve_settings(kafka_bootstrap, unique_name, signature_policy="off")
    worker = build_worker(off)
    url = worker.start()
    try:
        wait(lambda: ready(url), "ready without signatures")
        assert served_version(url) == "5"
    finally:
        worker.stop()
