"""The whole path for a sparse model on the real broker: ctr samples -> `dlrm` trainer with
delta snapshots -> server -> a ``tritonclient.http`` request with IDs and lengths, answered
with exactly the trainer's final weights."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient
from safetensors.numpy import load_file

from streamtrain.builders.server import build_worker
from streamtrain.builders.trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.datasets.ctr import ctr
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import spec_for_model
from streamtrain.train.models import build_model
from tests.delta_fixtures import CTR_SPARSE, one_base_then_deltas
from tests.integration.trainer_harness import latest_checkpoint, read_to_the_end


def test_served_sparse_model_answers_with_the_trainers_final_weights(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    name = unique_name
    settings = one_base_then_deltas(
        kafka_bootstrap,
        name,
        tmp_path,
        model={"name": "dlrm", "sparse": CTR_SPARSE, "params": {"rows": 4096, "embedding_dim": 8}},
        batch_size=64,
        optimizer={"name": "adagrad", "lr": 0.05},
        snapshot_every_steps=5,
        samples=3000,
    )
    info = ctr(users=2000, items=500)
    kafka = KafkaConnection.from_settings(settings.kafka)
    with SampleProducer(spec=info.spec, topic=f"{name}-samples", kafka=kafka) as producer:
        for chunk in info.iterate(3000, seed=4):
            producer.send_many(chunk.features, chunk.labels, sparse=chunk.sparse)

    worker = build_worker(settings)
    url = worker.start()
    try:
        summary = build_trainer(settings).run()
        assert summary.samples_seen == 3000, "every produced sample was learned"
        read_to_the_end(tmp_path, 3000)
        spec = spec_for_model(settings.model)
        model = build_model("dlrm", spec, settings.model.params).eval()
        weights = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})

        x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        users, items = np.array([17, 1_000_020, 5], np.int64), np.array([17, 99, 3], np.int64)
        inputs = []
        for tensor_name, data, kind in [
            ("input", x, "FP32"),
            ("user", users, "INT64"),
            ("user__lengths", np.ones(3, np.int64), "INT64"),
            ("item", items, "INT64"),
            ("item__lengths", np.ones(3, np.int64), "INT64"),
        ]:
            tensor = httpclient.InferInput(tensor_name, list(data.shape), kind)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        sparse = {
            "user": JaggedTensor.from_lists([[int(u)] for u in users]),
            "item": JaggedTensor.from_lists([[int(i)] for i in items]),
        }
        with torch.no_grad():
            want = torch.sigmoid(model(torch.from_numpy(x), sparse)).numpy()
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        deadline = time.monotonic() + 60
        not_ready = 0
        while True:  # the server applies the last snapshots (bases and deltas) in order
            try:
                got = client.infer("m", inputs).as_numpy("probabilities")[:, 1]
                if np.allclose(got, want, rtol=0, atol=1e-6):
                    break
            except httpclient.InferenceServerException as exc:
                # Only "no snapshot live yet" (503) is expected; any other 4xx/5xx fails.
                if exc.status() != "503":
                    raise
                not_ready += 1
            assert time.monotonic() < deadline, (
                f"the server never reached the trainer's weights ({not_ready} answers 503)"
            )
            time.sleep(0.2)  # poll interval of a condition wait
        client.close()
    finally:
        worker.stop()
