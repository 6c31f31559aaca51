"""End-to-end freshness of the delayed-label loop: from a label's production until a served
prediction comes from weights that learned from it.

Run: ``.venv/bin/python bench/join_freshness.py [--rate 100] [--seconds 20]`` (also section 4
of ``bench/join.py``).

``streamtrain serve`` (``serve.prediction_log`` on), ``streamtrain join`` and ``streamtrain
train`` run as child processes on the embedded broker. This process sends one-row infer
requests with ids ``q-<n>`` at ``--rate`` and, as soon as each is answered, its label
(``LabelProducer``, JSON, ``timestamp`` = the send time). The join emits the served sample with
that label and timestamp; the trainer learns it; each snapshot manifest carries its data
watermark (the newest sample timestamp learned from). A label sent at ``p`` is reflected once
an infer answer comes from a version whose watermark is ``>= p``; its freshness is that
answer's time minus ``p``. The path measured: label produce -> Kafka -> join (waiting for the
logged prediction when the label overtakes it) -> samples topic -> train step -> snapshot
publish -> server verify and swap -> the next answer. Warm-up: 512 samples go to the samples
topic directly so that the trainer publishes a first version (a server answers nothing
before it); labels count from one second after the first answer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from freshness import MODEL_ENV, SPEC, Freshness, _freshness, _watermarks

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.client import LabelProducer, SampleProducer
from streamtrain.kafka import KafkaConnection, create_topics

TAIL_S = 30.0  # longest wait for the last labels to be reflected


def measure(bootstrap: str, rate: float = 100.0, seconds: float = 20.0) -> Freshness:
    name = f"jfresh-{os.getpid()}"
    port = free_port()
    topics = {
        "SAMPLES": f"{name}.samples",
        "DEAD_LETTER": f"{name}.dlq",
        "SNAPSHOTS": f"{name}.snapshots",
        "PREDICTIONS": f"{name}.predictions",
        "LABELS": f"{name}.labels",
        "LABELS_DEAD_LETTER": f"{name}.labels.dlq",
    }
    create_topics(bootstrap, topics.values(), 1)
    env = {
        **os.environ,
        **MODEL_ENV,
        **{f"STREAMTRAIN_TOPICS__{k}": v for k, v in topics.items()},
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMTRAIN_INGEST__MAX_WAIT_MS": "20",
        "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "0.2",
        "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
        "STREAMTRAIN_SERVE__MODEL_NAME": "fresh",
        "STREAMTRAIN_SERVE__PREDICTION_LOG": "true",
        "STREAMTRAIN_JOIN__WINDOW_S": "60",
        "STREAMTRAIN_JOIN__METRICS_PORT": "0",
        "STREAMTRAIN_JOIN__GROUP_ID": f"{name}-join",
    }
    stop = threading.Event()
    answers: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as folder:
        env["STREAMTRAIN_TRAIN__CHECKPOINT_DIR"] = f"{folder}/checkpoints"
        env["STREAMTRAIN_JOIN__STATE_DIR"] = f"{folder}/join"
        cli = [sys.executable, "-m", "streamtrain.cli"]
        commands = [
            [*cli, "train", "--metrics-port", "0"],
            [*cli, "serve", "--port", str(port)],
            [*cli, "join", "--no-create-missing-topics"],
        ]
        children = [
            subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for c in commands
        ]
        try:
            watermarks = _watermarks(bootstrap, topics["SNAPSHOTS"], stop)
            _warm_up(bootstrap, topics["SAMPLES"])
            labelled = _serve_and_label(bootstrap, topics["LABELS"], port, rate, seconds, answers)
            _tail(port, answers, watermarks, labelled[-1] if labelled else 0.0)
        finally:
            stop.set()
            for child in children:
                child.terminate()
            for child in children:
                child.wait(60)
    return _freshness(labelled, answers, watermarks, rate)


def _warm_up(bootstrap: str, topic: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(512, 16)).astype(np.float32)
    with SampleProducer(
        spec=SPEC, topic=topic, format="binary", kafka=KafkaConnection(bootstrap)
    ) as producer:
        producer.send_many(x, (x.sum(axis=1) > 0).astype(np.int64), timestamps=np.full(512, 0.0))
        producer.flush()


def _infer(http: httpx.Client, port: int, rid: str, row: np.ndarray) -> dict[str, object] | None:
    body = {
        "id": rid,
        "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": row.tolist()}],
    }
    try:
        reply = http.post(f"http://127.0.0.1:{port}/v2/models/fresh/infer", json=body)
    except httpx.TransportError:
        return None  # still starting
    return reply.json() if reply.status_code == 200 else None


def _seen(answers: list[tuple[float, int]], reply: dict[str, object]) -> None:
    version = int(str(reply["model_version"]))
    if not answers or version > answers[-1][1]:
        answers.append((time.time(), version))


def _serve_and_label(
    bootstrap: str,
    topic: str,
    port: int,
    rate: float,
    seconds: float,
    answers: list[tuple[float, int]],
) -> list[float]:
    rng = np.random.default_rng(0)
    labelled: list[float] = []
    kafka = KafkaConnection(bootstrap)
    with (
        httpx.Client(timeout=5) as http,
        LabelProducer(spec=SPEC, topic=topic, kafka=kafka) as labels,
    ):
        started, measured_from, n = time.monotonic(), -1.0, 0
        paced_from, paced_n = 0.0, 0  # the rate counts from the first answer on
        while True:
            elapsed = time.monotonic() - started
            if measured_from >= 0 and elapsed - measured_from >= seconds:
                break
            if elapsed > seconds + 120:
                raise RuntimeError("the server never answered: is the trainer publishing?")
            if measured_from >= 0 and n - paced_n >= (elapsed - paced_from) * rate:
                time.sleep(0.001)  # pacing the request rate
                continue
            row = rng.uniform(-1, 1, size=16).astype(np.float32)
            reply = _infer(http, port, f"q-{n}", row)
            n += 1
            if reply is None:
                time.sleep(0.05)  # no weights yet: nothing was logged, nothing to label
                continue
            _seen(answers, reply)
            if measured_from < 0:
                measured_from, paced_from, paced_n = elapsed + 1.0, elapsed, n
            sent_at = time.time()
            labels.send(str(reply["id"]), int(row.sum() > 0), timestamp=sent_at)
            if 0 <= measured_from <= elapsed:
                labelled.append(sent_at)
    return labelled


def _tail(
    port: int, answers: list[tuple[float, int]], watermarks: dict[int, float], last: float
) -> None:
    """Keep asking until an answer reflects the last label (or ``TAIL_S`` passes)."""
    deadline = time.monotonic() + TAIL_S
    row = np.zeros(16, np.float32)
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            reply = _infer(http, port, "tail", row)
            if reply is not None:
                _seen(answers, reply)
            if answers and watermarks.get(answers[-1][1], 0.0) >= last:
                return
            time.sleep(0.005)  # polling interval of a condition wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        print(describe(measure(broker.bootstrap_servers, args.rate, args.seconds)))


def describe(found: Freshness) -> str:
    return (
        f"label -> served freshness at {found.rate:.0f} requests + labels/s (serve with the"
        f" prediction log, join, train; snapshot every 0.2 s): p50 {found.p50_s * 1000:.0f} ms,"
        f" p99 {found.p99_s * 1000:.0f} ms over {found.samples} labels, {found.versions}"
        f" versions, {found.unreflected} unreflected"
    )


if __name__ == "__main__":
    main()
