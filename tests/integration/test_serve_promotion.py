"""Promotion by served quality on a real server over the real broker: with a 50/50 split and
labels that favour one version, the server promotes a better candidate and rolls back a worse
one, logs the evidence and counts each decision on /metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection, record_producer
from streamtrain.wire.label_record import encode_label_json
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import ROW, logging_settings, serving_5_then_6
from tests.integration.trainer_harness import scrape
from tests.version_fixtures import expected_value

TOKEN = "promotion-test-token-41b0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DECISIONS = "streamtrain_serve_promotion_decisions_total"


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> Settings:
    return logging_settings(
        kafka_bootstrap,
        unique_name,
        labels=True,
        admin_token=TOKEN,
        retain_versions=2,
        promotion=True,
        promotion_min_rows=40,
        promotion_check_s=0.2,
    )


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    with serving_5_then_6(settings, _infer) as served:
        yield served


def _infer(url: str, request_id: str) -> str:
    body = {
        "id": request_id,
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
    }
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S)
    return str(response.json().get("model_version", ""))


def _decided(url: str, decision: str) -> float:
    return scrape(f"{url}/metrics").get(f'{DECISIONS}{{decision="{decision}"}}', 0.0)


@pytest.mark.parametrize(
    ("truth", "decision", "live_after"), [(5, "promote", "5"), (6, "rollback", "6")]
)
def test_the_better_candidate_is_promoted_the_worse_rolled_back(
    settings: Settings,
    url: str,
    truth: int,
    decision: str,
    live_after: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrain.serve.promotion")
    before = _decided(url, decision)
    plan = {"candidate": "5", "share": 0.5, "mode": "split"}
    assert httpx.post(f"{url}/v2/admin/split", json=plan, headers=AUTH).status_code == 200
    producer = record_producer(KafkaConnection.from_settings(settings.kafka), linger_ms=5)
    rng = np.random.default_rng(truth)
    deadline = time.monotonic() + 120
    sent = 0
    try:
        # Labels come from version ``truth``'s answer plus noise: that version serves better.
        while httpx.get(f"{url}/v2/admin/split", headers=AUTH).json()["split"] is not None:
            assert time.monotonic() < deadline, f"no decision after {sent} labelled requests"
            for _ in range(20):
                rid = f"p{truth}-{sent}"
                sent += 1
                _infer(url, rid)
                label = expected_value(truth, ROW) + float(rng.normal(0, 0.002))
                producer.send(
                    settings.topics.labels, encode_label_json(rid, [label]), key=rid.encode()
                )
            producer.flush(30)
            time.sleep(0.1)  # pacing of the request stream; the loop waits on the decision
    finally:
        producer.close(10)
    assert _decided(url, decision) == before + 1
    state = httpx.get(f"{url}/v2/admin/versions", headers=AUTH).json()
    assert state["live"] == live_after
    assert _infer(url, "after") == live_after
    evidence = [r.getMessage() for r in caplog.records if "promotion:" in r.getMessage()]
    assert len(evidence) == 1 and evidence[0].startswith(f"promotion: {decision} candidate 5")
    assert "mean loss" in evidence[0] and "z " in evidence[0]
