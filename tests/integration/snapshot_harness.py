"""Helpers for serving tests on the real broker: publish (possibly forged) snapshots, query a
server, scrape its metrics, and a TCP forwarder that plays a broker going away and coming back."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import torch
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection, create_topics, record_consumer
from streamtrain.sample.spec import spec_for_model
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.payload import encode_state, sha256_hex
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.models import build_model
from tests.integration.process_output import REQUEST_S
from tests.version_fixtures import version_weights

# Without the standardiser: test snapshots fill every tensor with the version number.
MODEL = {
    "name": "linear",
    "task": "regression",
    "input_shape": [4],
    "target_dim": 1,
    "params": {"standardize": False, "scale_targets": False},
}
ROW = [1.0] * 4
Tamper = Literal["manifest", "signature"]


def serve_settings(
    bootstrap: str, topic: str, *, model: dict[str, Any] | None = None, **serve: Any
) -> Settings:
    """A server of model ``m`` following ``topic``: ``MODEL`` unless ``model`` says another."""
    return load_settings(
        overrides={
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {"snapshots": topic},
            "model": MODEL if model is None else model,
            "serve": {"port": 0, "model_name": "m", **serve},
        }
    )


def logging_settings(bootstrap: str, name: str, *, labels: bool = False, **serve: Any) -> Settings:
    """:func:`serve_settings` with the prediction log on, to a topic ``{name}.p`` of two
    partitions (and labels on ``{name}.l`` with ``labels``); every topic created."""
    created = serve_settings(bootstrap, name, prediction_log=True, **serve)
    names = {"predictions": f"{name}.p"} | ({"labels": f"{name}.l"} if labels else {})
    create_topics(bootstrap, [name])
    create_topics(bootstrap, list(names.values()), partitions=2)
    return created.model_copy(update={"topics": created.topics.model_copy(update=names)})


@contextlib.contextmanager
def serving_5_then_6(settings: Settings, version_of: Callable[[str, str], str]) -> Iterator[str]:
    """A running worker's URL once it serves version 6 and retains 5; ``version_of(url, id)``
    is the version that answered a request with that id."""
    worker = build_worker(settings)
    served = worker.start()
    try:
        publish(settings, 5)
        wait(lambda: version_of(served, "warm-5") == "5", "version 5 live")
        publish(settings, 6)
        wait(lambda: version_of(served, "warm-6") == "6", "version 6 live, 5 retained")
        yield served
    finally:
        worker.stop()


def settings_writer(settings: Settings, topic: str | None = None) -> SnapshotWriter:
    """A writer of snapshots that a server built from ``settings`` accepts (its model's name and
    settings hash), to ``topic`` or the settings' snapshots topic; the caller closes it."""
    return SnapshotWriter(
        kafka=KafkaConnection.from_settings(settings.kafka),
        topic=settings.topics.snapshots if topic is None else topic,
        model_name=settings.model.name,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        chunk_bytes=512 * 1024,
    )


def weights(settings: Settings, version: int, *, nan: bool = False) -> dict[str, torch.Tensor]:
    model = build_model("linear", spec_for_model(settings.model), settings.model.params)
    tensors = version_weights(model, version)
    if nan:
        next(iter(tensors.values())).view(-1)[0] = float("nan")
    return tensors


def publish(
    settings: Settings,
    version: int,
    *,
    run_id: str = "run-a",
    signer: ManifestSigner | None = None,
    tamper: Tamper | None = None,
    nan: bool = False,
    created_at: float | None = None,
    fill: int | None = None,
) -> SnapshotManifest:
    """Write one snapshot (one chunk, then its manifest) as a publisher would, or forged;
    its weights are those of version ``fill`` when given (two snapshots of one version that
    answer differently)."""
    payload, infos = encode_state(weights(settings, version if fill is None else fill, nan=nan))
    sid = f"{run_id}/{version}"
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    topic = settings.topics.snapshots
    try:
        first = producer.send(
            topic,
            value=payload,
            key=wire.chunk_key("linear", sid, 0),
            headers=wire.chunk_headers("linear", sid, 0, 1),
            partition=0,
        ).get(timeout=30)
        manifest = SnapshotManifest(
            model_name="linear",
            settings_hash=settings_hash(settings.model.model_dump(mode="json")),
            run_id=run_id,
            version=version,
            created_at=time.time() if created_at is None else created_at,
            data_watermark=None,
            offsets={0: version},
            tensors=infos,
            size_bytes=len(payload),
            sha256=sha256_hex(payload),
            chunk_count=1,
            chunk_bytes=512 * 1024,
            first_chunk_offset=first.offset,
        )
        value = manifest.model_dump_json().encode()
        signature = signer.sign(value) if signer is not None else None
        if tamper == "manifest":
            # One digit of created_at: still a valid manifest, no longer what was signed.
            value = _flip_digit(value, value.index(b'"created_at":') + len(b'"created_at":'))
        elif tamper == "signature" and signature is not None:
            signature = forged(signature)
        send_manifest(producer, topic, "linear", sid, value, signature)
    finally:
        producer.close(5)
    return manifest


def forged(signature: str) -> str:
    """``signature`` with one bit of its Ed25519 bytes flipped: well formed, not valid."""
    prefix, encoded = signature.rsplit(":", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"


def send_chunks(
    producer: KafkaProducer,
    topic: str,
    model: str,
    sid: str,
    sends: list[tuple[int, bytes, str]],
    total: int,
    timeout: float = 30,
) -> int:
    """Send chunk records ``(index, bytes, sha256)`` of snapshot ``sid`` (of ``total``
    chunks) as the publisher frames them, on partition 0, in the order given; the offset of
    the first one written (the manifest's ``first_chunk_offset``)."""
    futures = [
        producer.send(
            topic,
            value=data,
            key=wire.chunk_key(model, sid, index),
            headers=wire.chunk_headers(model, sid, index, total, digest),
            partition=0,
        )
        for index, data, digest in sends
    ]
    producer.flush()
    return int(min(f.get(timeout=timeout).offset for f in futures))


def send_manifest(
    producer: KafkaProducer,
    topic: str,
    model: str,
    sid: str,
    value: bytes,
    signature: str | None = None,
    timeout: float = 30,
) -> None:
    """Send one manifest record of snapshot ``sid`` as the publisher frames it (key, headers,
    partition 0) and wait for the broker's acknowledgement."""
    producer.send(
        topic,
        value=value,
        key=wire.manifest_key(model, sid),
        headers=wire.manifest_headers(model, sid, signature),
        partition=0,
    ).get(timeout=timeout)


def _flip_digit(value: bytes, index: int) -> bytes:
    data = bytearray(value)
    data[index] = ord("1") if data[index] != ord("1") else ord("2")
    return bytes(data)


def wait(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def prediction_log(
    settings: Settings,
    expected: int,
    keep: Callable[[Any], bool] = lambda record: True,
    timeout_s: float = 60.0,
) -> list[Any]:
    """The records on the predictions topic that ``keep`` takes, once ``expected`` of them
    arrived, with what one more poll brings (a duplicate would show up there)."""
    consumer = record_consumer(
        KafkaConnection.from_settings(settings.kafka), topic=settings.topics.predictions
    )
    try:
        partitions = consumer.partitions_of_topic()
        consumer.assign(partitions)
        consumer.seek_to_beginning(partitions)
        records: list[Any] = []

        def arrived() -> bool:
            records.extend(r for r in consumer.poll(200, 10_000) if keep(r))
            return len(records) >= expected

        wait(arrived, f"{expected} prediction-log records", timeout_s)
        records.extend(r for r in consumer.poll(500, 10_000) if keep(r))
        return records
    finally:
        consumer.close()


def ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200


def served_version(url: str) -> str | None:
    """The version an inference answers with; None while not ready."""
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S)
    if response.status_code == 503:
        return None
    response.raise_for_status()
    return str(response.json()["model_version"])


def rejections(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=REQUEST_S, follow_redirects=True).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "streamtrain_serve_rejected_snapshots":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = sample.value
    return counts


class Forwarder:
    """A loopback port that refuses connections until :meth:`open`, then relays to ``target``.

    Servers bootstrapped through it see Kafka unreachable, then reachable (the broker's
    metadata then points clients at the broker itself).
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()  # nothing listens here until open(): connections are refused
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept)

    def close(self) -> None:
        for sock in [*self._sockets, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            self._spawn(_pump, client, upstream)
            self._spawn(_pump, upstream, client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
