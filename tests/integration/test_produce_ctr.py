"""`streamtrain produce --dataset ctr` end to end: sparse click samples in both formats reach
ingest with their user and item IDs, exactly as the dataset generated them."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from streamtrain.datasets.ctr import ctr
from streamtrain.ingest import KafkaSampleSource
from streamtrain.kafka import KafkaConnection


@pytest.mark.parametrize("format", ["json", "binary"])
def test_produce_ctr_samples_arrive_with_their_ids(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, format: str
) -> None:
    args = ["--dataset", "ctr", "--count", "300", "--rate", "0", "--format", format]
    args += ["--topic", unique_name, "--bootstrap-servers", kafka_bootstrap, "--seed", "5"]
    done = subprocess.run(
        [sys.executable, "-m", "streamtrain.cli", "produce", *args, "--partitions", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "produced 300 samples of ctr" in done.stdout
    info = ctr()
    expected = next(info.iterate(300, seed=5, chunk_size=300))
    users, items, features, records = [], [], [], 0
    with KafkaSampleSource(
        spec=info.spec, topic=unique_name, group_id=unique_name, kafka=kafka_connection
    ) as source:
        deadline = time.monotonic() + 30
        while records < 300:
            assert time.monotonic() < deadline, f"only {records} records"
            batch = source.next_batch()
            records += batch.records
            if batch.size:
                assert batch.sparse is not None
                users.append(batch.sparse.features["user"].ids)
                items.append(batch.sparse.features["item"].ids)
                features.append(batch.features)
    assert expected.sparse is not None
    assert np.concatenate(users).tolist() == expected.sparse.features["user"].ids.tolist()
    assert np.concatenate(items).tolist() == expected.sparse.features["item"].ids.tolist()
    assert np.allclose(np.concatenate(features), expected.features)
