"""`streamtrain produce` end to end, as a subprocess against the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamtrain.datasets import DATASETS
from streamtrain.ingest import KafkaSampleSource, SourceOptions
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client


def _produce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamtrain.cli", "produce", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _read_all(
    kafka: KafkaConnection, topic: str, spec: SampleSpec, count: int
) -> tuple[np.ndarray, int]:
    with KafkaSampleSource(
        spec=spec,
        topic=topic,
        group_id=topic,
        kafka=kafka,
        options=SourceOptions(max_batch_size=512, start_from="earliest"),
    ) as source:
        labels, records = [], 0
        deadline = time.monotonic() + 20
        while records < count and time.monotonic() < deadline:
            batch = source.next_batch()
            records += batch.records
            if batch.size:
                labels.append(batch.labels)
        assert len(source.partitions) >= 1
        return np.concatenate(labels) if labels else np.zeros(0), records


def test_produce_binary_hyperplane_end_to_end(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str
) -> None:
    done = _produce(
        "--dataset",
        "hyperplane",
        "--count",
        "300",
        "--rate",
        "0",
        "--format",
        "binary",
        "--topic",
        unique_name,
        "--bootstrap-servers",
        kafka_bootstrap,
        "--partitions",
        "2",
        "--seed",
        "3",
    )
    assert done.returncode == 0, done.stderr
    assert "produced 300 samples of hyperplane" in done.stdout
    labels, records = _read_all(kafka_connection, unique_name, DATASETS["hyperplane"].spec, 300)
    assert records == 300 and len(labels) == 300  # every record valid
    expected = next(DATASETS["hyperplane"].iterate(300, seed=3, chunk_size=300)).labels
    assert sorted(labels.tolist()) == sorted(expected.tolist())


def test_produce_paced_json_file_replay(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    lines = [json.dumps({"features": [i, 1.0], "label": i % 2}) for i in range(5)]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = tmp_path / "st.yaml"
    config.write_text("model:\n  task: binary\n  input_shape: [2]\n")
    started = time.monotonic()
    done = _produce(
        "--dataset",
        "file",
        "--file",
        str(path),
        "--count",
        "20",
        "--rate",
        "100",
        "--topic",
        unique_name,
        "--bootstrap-servers",
        kafka_bootstrap,
        "--config",
        str(config),
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.19  # 20 samples at 100/s are paced, not burst
    spec = SampleSpec(feature_shape=(2,), task="binary")
    labels, records = _read_all(kafka_connection, unique_name, spec, 20)
    assert records == 20 and labels.tolist() == [0, 1, 0, 1, 0] * 4


def test_sigterm_stops_production_cleanly_and_reports_the_count(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamtrain.cli",
            "produce",
            "--dataset",
            "hyperplane",
            "--count",
            "1000000",
            "--rate",
            "200",
            "--format",
            "binary",
            "--topic",
            unique_name,
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spec = DATASETS["hyperplane"].spec
    _, records = _read_all(kafka_connection, unique_name, spec, 50)  # it is producing
    assert records >= 50
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    sent = int(out.split("produced ")[1].split()[0])
    assert "(stopped early)" in out and 50 <= sent < 1_000_000
    _, on_topic = _read_all(kafka_connection, unique_name, spec, sent)
    assert on_topic == sent, "every sample reported as sent was flushed to the topic"
