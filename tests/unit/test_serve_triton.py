"""The independent ``tritonclient.http`` client against a real uvicorn server (no broker)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pytest
import torch

from streamtrain.serve.endpoints import create_app
from streamtrain.serve.inference import DirectEngine, head_for
from streamtrain.serve.protocol import ModelIO
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.slot import WeightSlot
from streamtrain.serve.watcher import ReceivedLike, RejectedLike, SnapshotWatcher
from streamtrain.spec import SampleSpec

httpclient = pytest.importorskip("tritonclient.http")

SPEC = SampleSpec((3,), "multiclass", num_classes=4)


class _NoSnapshots:
    def newest_first(self, timeout_s: float) -> Iterable[ReceivedLike]:
        return []

    def poll(self, timeout_s: float) -> Sequence[ReceivedLike | RejectedLike]:
        time.sleep(timeout_s)  # like a real source with nothing new: block until the timeout
        return []

    def close(self) -> None:
        return None


@pytest.fixture
def served() -> Iterator[tuple[str, torch.nn.Module]]:
    model = torch.nn.Linear(3, 4)
    slot = WeightSlot(torch.nn.Linear(3, 4))
    slot.load(dict(model.state_dict()), version=42, run_id="r")
    engine = DirectEngine(slot, head_for(SPEC), torch.device("cpu"))
    app = create_app(
        slot=slot,
        engine=engine,
        io=ModelIO.for_spec(SPEC),
        model_name="clf",
        max_body_bytes=1 << 20,
    )
    worker = ServingWorker(
        app=app,
        slot=slot,
        engine=engine,
        watcher=SnapshotWatcher(_NoSnapshots(), slot),
        host="127.0.0.1",
        port=0,
    )
    url = worker.start()
    yield url.removeprefix("http://"), model
    worker.stop()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers(served: tuple[str, torch.nn.Module], binary: bool) -> None:
    address, model = served
    client = httpclient.InferenceServerClient(address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("clf")
        assert client.get_model_metadata("clf")["versions"] == ["42"]
        features = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
        tensor = httpclient.InferInput("input", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary),
            httpclient.InferRequestedOutput("predicted_class", binary_data=binary),
        ]
        result = client.infer("clf", [tensor], outputs=outputs, request_id="abc")
        expected = torch.softmax(model(torch.from_numpy(features)), dim=1).detach().numpy()
        assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
        assert result.as_numpy("predicted_class").tolist() == expected.argmax(axis=1).tolist()
        response = result.get_response()
        assert response["model_version"] == "42" and response["id"] == "abc"
        # tritonclient's defaults (no outputs named: every output, binary)
        tensor.set_data_from_numpy(features)
        default = client.infer("clf", [tensor])
        assert np.allclose(default.as_numpy("probabilities"), expected, atol=1e-6)
        packed = client.infer("clf", [tensor], request_compression_algorithm="gzip")
        assert np.allclose(packed.as_numpy("probabilities"), expected, atol=1e-6)
    finally:
        client.close()
