"""Guarantee 3 for delta snapshots on the real broker: with trusted keys, a delta that is
unsigned, signed by an untrusted key, or signed over other bytes is refused like a base would
be (``streamtrain_serve_rejected_snapshots_total{reason="signature"}`` on the server's own
/metrics), and the server keeps answering with the version it had, bit for bit."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from tests.integration.delta_serving import EMBEDDING_MODEL, DeltaChain, outputs_of
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import rejections, serve_settings, wait

# The servers' snapshot reader and the delta writer follow the client library under test.
pytestmark = pytest.mark.kafka_client

# IDs 0..15 and 250..265 with dense features: rows deltas touch now and then.
ROWS = np.array([[i, 250 + i, 0.5, -1.0] for i in range(16)], dtype=np.float32)


class SignsOtherBytes(ManifestSigner):
    """The trusted key, signing something else than the record it is sent with."""

    def sign(self, manifest_bytes: bytes) -> str:
        return super().sign(manifest_bytes + b" ")


def served(url: str) -> tuple[str, np.ndarray] | None:
    body = {
        "inputs": [
            {"name": "input", "shape": list(ROWS.shape), "datatype": "FP32",
             "data": ROWS.ravel().tolist()}
        ]
    }  # fmt: skip
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S)
    if response.status_code == 503:
        return None
    response.raise_for_status()
    payload = response.json()
    (value,) = [o for o in payload["outputs"] if o["name"] == "value"]
    return str(payload["model_version"]), np.array(value["data"], np.float32).reshape(len(ROWS), -1)


def test_unsigned_and_forged_deltas_are_refused_and_the_old_version_keeps_serving(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, examples_on_path: None
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    keys = {name: generate_key_pair(tmp_path, name) for name in ("trainer", "intruder")}
    settings = serve_settings(
        kafka_bootstrap, unique_name, model=EMBEDDING_MODEL, trusted_keys=[keys["trainer"][1]]
    )
    trainer = ManifestSigner.from_file(keys["trainer"][0])
    chain = DeltaChain(settings, signer=trainer)
    worker = build_worker(settings)
    url = worker.start()
    try:
        chain.base()
        good = chain.delta()
        wait(lambda: (served(url) or ("",))[0] == str(good.version), "the signed delta live")
        version, values = served(url) or ("", np.empty(0))
        np.testing.assert_allclose(values, outputs_of(chain.states[good.version], ROWS), rtol=1e-6)
        before = rejections(url)

        refused = [
            chain.delta(signer=None),  # unsigned
            chain.delta(signer=ManifestSigner.from_file(keys["intruder"][0])),  # untrusted key
            chain.delta(signer=SignsOtherBytes.from_file(keys["trainer"][0])),  # other bytes
        ]
        wait(
            lambda: rejections(url)["signature"] == before["signature"] + 3,
            "three signature rejections on /metrics",
        )
        after = rejections(url)
        assert after["signature"] == before["signature"] + 3
        # Nothing else was tried: a refused delta is not applied and leaves no gap to repair.
        assert {r: v for r, v in after.items() if r != "signature"} == {
            r: v for r, v in before.items() if r != "signature"
        }
        version, values = served(url) or ("", np.empty(0))
        assert version == str(good.version)
        np.testing.assert_allclose(values, outputs_of(chain.states[good.version], ROWS), rtol=1e-6)
        for manifest in refused:  # each would have answered differently: the check can fail
            assert not np.allclose(values, outputs_of(chain.states[manifest.version], ROWS))
        assert worker.slot.info is not None and worker.slot.info.version == good.version

        # The trainer's next signed base is taken: the server still follows the topic.
        base = chain.base()
        wait(lambda: (served(url) or ("",))[0] == str(base.version), "the next signed base")
        _, values = served(url) or ("", np.empty(0))
        np.testing.assert_allclose(values, outputs_of(chain.states[base.version], ROWS), rtol=1e-6)
    finally:
        worker.stop()
        chain.close()
