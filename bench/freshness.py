"""End-to-end freshness: from a sample's production until a served prediction reflects it.

A real trainer (``streamtrain train``) and a real server (``streamtrain serve``) run as child
processes against the embedded broker; this process produces samples at a steady rate, each
stamped with its production time, and polls the server's infer endpoint. A sample produced at
time ``p`` is reflected once the server answers with a version whose snapshot's data watermark
(newest sample timestamp learned from, read from the snapshot manifests) is ``>= p``; its
freshness is the time of that first answer minus ``p``.
"""

from __future__ import annotations

import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from streamtrain.broker import free_port
from streamtrain.client import SampleProducer
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import ReceivedSnapshot, SnapshotSubscriber

SPEC = SampleSpec(feature_shape=(16,), task="binary")
MODEL_ENV = {
    "STREAMTRAIN_MODEL__NAME": "mlp",
    "STREAMTRAIN_MODEL__TASK": "binary",
    "STREAMTRAIN_MODEL__INPUT_SHAPE": "[16]",
    "STREAMTRAIN_MODEL__NUM_CLASSES": "2",
}


@dataclass(frozen=True)
class Freshness:
    samples: int
    versions: int
    p50_s: float
    p99_s: float
    unreflected: int  # samples produced that no served answer reflected before the end
    rate: float

    def describe(self) -> str:
        return (
            f"freshness at {self.rate:.0f} samples/s (real trainer + server, snapshot every "
            f"0.2 s): p50 {self.p50_s * 1000:.0f} ms, p99 {self.p99_s * 1000:.0f} ms over "
            f"{self.samples} samples, {self.versions} versions, {self.unreflected} unreflected"
        )


def _model_settings_hash() -> str:
    from streamtrain.config import load_settings

    model = load_settings(
        overrides={"model": {"name": "mlp", "task": "binary", "input_shape": [16]}}
    ).model
    return settings_hash(model.model_dump(mode="json"))


def _watermarks(bootstrap: str, topic: str, stop: threading.Event) -> dict[int, float]:
    seen: dict[int, float] = {}

    def follow() -> None:
        subscriber = SnapshotSubscriber(
            kafka=KafkaConnection(bootstrap),
            topic=topic,
            settings_hash=_model_settings_hash(),
        )
        try:
            while not stop.is_set():
                for event in subscriber.poll(0.2):
                    if isinstance(event, ReceivedSnapshot) and event.manifest.data_watermark:
                        seen[event.manifest.version] = event.manifest.data_watermark
        finally:
            subscriber.close()

    threading.Thread(target=follow, daemon=True, name="watermarks").start()
    return seen


def measure(
    bootstrap: str,
    rate: float = 1000.0,
    seconds: float = 20.0,
    device: str | None = None,
    log_dir: Path | None = None,
    start_timeout: float = 120.0,
) -> Freshness:
    """Run trainer + server, produce at ``rate`` for ``seconds``, return freshness figures.

    ``device`` (``cpu``, ``cuda``) puts both on it; None leaves each its own default
    (``train.device`` auto, ``serve.device`` cpu). ``log_dir``: where the two processes'
    output goes (``train.log``, ``serve.log``); discarded when None. ``start_timeout``: how long
    the server may take to answer with a trained version before the run fails."""
    name = f"fresh-{os.getpid()}"
    port = free_port()
    env = {
        **os.environ,
        **MODEL_ENV,
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMTRAIN_TOPICS__SAMPLES": f"{name}.samples",
        "STREAMTRAIN_TOPICS__DEAD_LETTER": f"{name}.dlq",
        "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}.snapshots",
        "STREAMTRAIN_INGEST__MAX_WAIT_MS": "20",
        "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "0.2",
        "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
        "STREAMTRAIN_SERVE__MODEL_NAME": "fresh",
    }
    if device is not None:
        env["STREAMTRAIN_TRAIN__DEVICE"] = env["STREAMTRAIN_SERVE__DEVICE"] = device
    stop = threading.Event()
    answers: list[tuple[float, int]] = []  # (time seen, version), first sighting per version
    with tempfile.TemporaryDirectory() as checkpoints:
        env["STREAMTRAIN_TRAIN__CHECKPOINT_DIR"] = checkpoints
        cli = [sys.executable, "-m", "streamtrain.cli"]
        commands = {"train": [*cli, "train", "--metrics-port", "0"]}
        commands["serve"] = [*cli, "serve", "--port", str(port)]
        sinks = {k: (log_dir / f"{k}.log").open("w") for k in commands} if log_dir else {}
        children = [
            subprocess.Popen(
                command,
                env=env,
                stdout=sinks.get(kind, subprocess.DEVNULL),
                stderr=subprocess.STDOUT,
            )
            for kind, command in commands.items()
        ]
        try:
            watermarks = _watermarks(bootstrap, f"{name}.snapshots", stop)
            produced = _produce_and_poll(
                bootstrap, f"{name}.samples", port, rate, seconds, answers, start_timeout
            )
        finally:
            stop.set()
            for child in children:
                child.terminate()
            for child in children:
                child.wait(30)
            for sink in sinks.values():
                sink.close()
    return _freshness(produced, answers, watermarks, rate)


def _produce_and_poll(
    bootstrap: str,
    topic: str,
    port: int,
    rate: float,
    seconds: float,
    answers: list[tuple[float, int]],
    start_timeout: float,
) -> list[float]:
    url = f"http://127.0.0.1:{port}/v2/models/fresh/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]}
    done = threading.Event()

    def poll() -> None:
        last = -1
        with httpx.Client(timeout=5) as http:
            while not done.is_set():
                try:
                    reply = http.post(url, json=body)
                except httpx.TransportError:
                    time.sleep(0.05)  # the server is still starting: nothing to wait on
                    continue
                if reply.status_code == 200:
                    version = int(reply.json()["model_version"])
                    if version > last:
                        answers.append((time.time(), version))
                        last = version
                time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True, name="poller")
    poller.start()
    rng = np.random.default_rng(0)
    produced: list[float] = []
    with SampleProducer(
        spec=SPEC, topic=topic, format="binary", kafka=KafkaConnection(bootstrap)
    ) as producer:
        # Warm-up: the stream flows until the server answers with a trained version (process
        # start-up is not freshness); only samples produced after that are measured.
        started, measured_from, sent = time.monotonic(), -1.0, 0
        while True:
            elapsed = time.monotonic() - started
            if measured_from < 0 and answers:
                measured_from = elapsed + 1.0
            if measured_from >= 0 and elapsed - measured_from >= seconds:
                break
            if measured_from < 0 and elapsed > start_timeout:
                raise RuntimeError(
                    f"the server answered with no trained version in {start_timeout:.0f} s"
                )
            due = int(elapsed * rate) - sent
            if due <= 0:
                time.sleep(0.001)
                continue
            x = rng.uniform(-1, 1, size=(due, 16)).astype(np.float32)
            now = time.time()
            producer.send_many(
                x, (x.sum(axis=1) > 0).astype(np.int64), timestamps=np.full(due, now), partition=0
            )
            producer.flush()
            sent += due
            if 0 <= measured_from <= elapsed:
                produced.extend([now] * due)
    time.sleep(3.0)  # let the last snapshots reach the server: a fixed tail, then we stop
    done.set()
    poller.join(10)
    return produced


def _freshness(
    produced: list[float],
    answers: list[tuple[float, int]],
    watermarks: dict[int, float],
    rate: float,
) -> Freshness:
    # For each first-seen version, the newest sample it reflects; a later answer reflects all
    # earlier samples too, so keep the running maximum.
    reflected: list[tuple[float, float]] = []  # (watermark, time seen)
    newest = -1.0
    for seen_at, version in sorted(answers):
        mark = watermarks.get(version)
        if mark is not None and mark > newest:
            newest = mark
            reflected.append((mark, seen_at))
    marks = [m for m, _ in reflected]
    delays = []
    for p in produced:
        i = bisect.bisect_left(marks, p)
        if i < len(reflected):
            delays.append(reflected[i][1] - p)
    if len(delays) < 2:
        raise RuntimeError("no served answer reflected the produced samples: is the trainer up?")
    q = statistics.quantiles(delays, n=100)
    return Freshness(len(produced), len(reflected), q[49], q[98], len(produced) - len(delays), rate)
