"""Operator safety through the real CLI (issue 22): a trainer that learns nothing publishes
nothing and says so loudly; two runs on one snapshots topic never share a version.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx

from streamtrain.kafka import KafkaConnection, partition_reader
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.verify import parse_manifest
from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import REQUEST_S, await_condition
from tests.integration.trainer_harness import (
    FEATURES,
    STOP_WHEN_IDLE_S,
    checkpoint_meta,
    hyperplane_stream,
    produce_json,
    run_to_end,
    scrape,
    trainer_env,
)

SAMPLES = 240


def _health(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _manifests(kafka: KafkaConnection, topic: str) -> list[SnapshotManifest]:
    """Every snapshot manifest on ``topic``, in topic order (chunks skipped)."""
    reader = partition_reader(kafka, topic=topic)
    deadline = time.monotonic() + 30
    try:
        if not reader.exists():
            return []
        low, end = reader.bounds(deadline)
        found = []
        for record in reader.read(low, end, deadline):
            header = wire.parse_headers(record.headers)
            if header is not None and header.kind == "manifest":
                manifest = parse_manifest(bytes(record.value or b""), header.snapshot_id)
                assert isinstance(manifest, SnapshotManifest), manifest
                found.append(manifest)
        return found
    finally:
        reader.close()


def test_a_trainer_that_learns_nothing_publishes_nothing_and_says_so(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    """model.input_shape [8] against 16-feature samples: every record is rejected. The trainer
    warns at the default log level, fails readiness (condition ``samples``), publishes no
    snapshot even on its graceful stop, still checkpoints how far the rejects went, and names
    the rejects in its stop line; a server started afterwards is not ready."""
    x, y = hyperplane_stream(SAMPLES, seed=3)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    env = trainer_env(
        kafka_bootstrap,
        unique_name,
        tmp_path / "ckpt",
        {
            "STREAMTRAIN_MODEL__INPUT_SHAPE": "[8]",
            "STREAMTRAIN_INGEST__ALL_REJECTED_ALARM_S": "1",
            "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "0.1",
        },
    )
    with running_cli(["train"], env) as (trainer, output):
        health_url = await_output(output, r"trainer health: +(\S+)")
        metrics_url = await_output(output, r"trainer metrics: +(\S+)")
        await_condition(
            lambda: "samples: " in _health(health_url)[1]["reason"],
            "readiness to fail on rejects",
        )
        status, body = _health(health_url)
        samples = next(c for c in body["reason"].split("; ") if c.startswith("samples: "))
        assert status == 503, body
        assert "none valid" in samples and "bad_shape" in samples, body
        warnings = [line for line in output.text().splitlines() if " WARNING " in line]
        summary = [line for line in warnings if "rejected" in line and "bad_shape" in line]
        assert summary, output.text()
        assert re.search(r"rejected \d+ of \d+ records from \S+ in the last", summary[0])
        assert f"{unique_name}-samples/0/" in summary[0], "one example, with where it is"
        await_condition(
            lambda: (
                scrape(metrics_url).get(
                    'streamtrain_ingest_rejected_records_total{reason="bad_shape"}', 0
                )
                == SAMPLES
            ),
            "every record counted as rejected",
        )
        scraped = scrape(metrics_url)
        assert scraped["streamtrain_ingest_samples_total"] == 0
        assert scraped["streamtrain_snapshot_published_total"] == 0
        assert "streamtrain_train_loss" not in scraped, "no loss before anything is learned"
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(60) == 0, output.text()
    text = output.text()
    stop = [line for line in text.splitlines() if line.startswith("stopped (signal)")]
    assert len(stop) == 1, text
    assert " at step 0: 0 samples learned" in stop[0], stop[0]
    assert f"0 optimizer updates, {SAMPLES} records rejected" in stop[0], stop[0]
    assert "nothing learned, so no snapshot was published" in text
    assert "Traceback" not in text

    assert _manifests(kafka_connection, f"{unique_name}-snapshots") == []
    meta = checkpoint_meta(tmp_path / "ckpt")
    assert meta["samples_seen"] == 0, meta
    assert meta["offsets"] == {"0": SAMPLES}, "the rejects are not read again after a restart"

    serve_env = {**env, "STREAMTRAIN_SERVE__PORT": "0"}
    with running_cli(["serve"], serve_env) as (_, served):
        ready = await_output(served, r"ready: +GET +(\S+)")
        await_condition(
            lambda: "no valid snapshot on the topic yet" in served.text(),
            "the server's first scan of the snapshots topic",
        )
        assert httpx.get(ready, timeout=REQUEST_S).status_code == 503, served.text()


def test_two_runs_on_one_topic_never_share_a_version(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    """The issue's scenario: a topic holds run A's trained versions; run B (a new checkpoint
    directory, nothing left to read) must not publish its untrained weights as A's newest
    version, and a server keeps A's; run C (a new directory and group: it learns the stream
    again) numbers strictly above A."""
    x, y = hyperplane_stream(SAMPLES, seed=4)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    snapshots = f"{unique_name}-snapshots"
    cadence = {
        "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "16",
        "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_STEPS": "4",
        "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
    }
    # A and C stop on the stream's last sample; B, which has none to learn, stops idle
    run_to_end(trainer_env(kafka_bootstrap, unique_name, tmp_path / "a", cadence), SAMPLES)
    first = _manifests(kafka_connection, snapshots)
    assert first, "run A published"
    newest_a = max(m.version for m in first)

    env = trainer_env(
        kafka_bootstrap, unique_name, tmp_path / "a", {"STREAMTRAIN_SERVE__PORT": "0"}
    )
    body = {
        "inputs": [
            {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.5] * FEATURES}
        ]
    }
    with running_cli(["serve"], env) as (_, served):
        infer = await_output(served, r"infer: +POST +(\S+)")

        def answer() -> httpx.Response:
            return httpx.post(infer, json=body, timeout=REQUEST_S)

        await_condition(lambda: answer().status_code == 200, "the server to take run A's")
        before = answer().json()
        assert before["model_version"] == str(newest_a)

        # B: same settings, a new checkpoint directory, the group's offsets at the end
        output_b = run_to_end(trainer_env(kafka_bootstrap, unique_name, tmp_path / "b", cadence))
        assert f"at step {newest_a}: 0 samples learned" in output_b, output_b
        assert _manifests(kafka_connection, snapshots) == first, "run B published nothing"
        assert answer().json() == before, "the server keeps run A's trained weights"

        # C: a new directory and group: it learns the whole stream again, above A
        fresh = {**cadence, "STREAMTRAIN_INGEST__GROUP_ID": f"{unique_name}-c"}
        run_to_end(trainer_env(kafka_bootstrap, unique_name, tmp_path / "c", fresh), SAMPLES)
        manifests = _manifests(kafka_connection, snapshots)
        by_run: dict[str, set[int]] = {}
        for manifest in manifests:
            by_run.setdefault(manifest.run_id, set()).add(manifest.version)
        assert len(by_run) == 2, by_run
        versions = [m.version for m in manifests]
        assert len(versions) == len(set(versions)), "a version names one set of weights"
        newest_c = max(versions)
        assert min(m.version for m in manifests[len(first) :]) > newest_a

        await_condition(
            lambda: answer().json()["model_version"] == str(newest_c), "the server to take C's"
        )
