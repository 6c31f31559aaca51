"""The independent ``tritonclient.http`` client against a real uvicorn server (no broker)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import running_worker, served_model

SPEC = SampleSpec((3,), "multiclass", num_classes=4)


@pytest.fixture
def served() -> Iterator[tuple[str, torch.nn.Module]]:
    model = torch.nn.Linear(3, 4)
    slot = WeightSlot(torch.nn.Linear(3, 4))
    slot.load(dict(model.state_dict()), SnapshotHeader(42, "r"))
    with running_worker(served_model(slot, SPEC, "clf")) as worker:
        yield worker.url.removeprefix("http://"), model


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
