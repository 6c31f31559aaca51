"""Shared pieces of the trainer integration tests: a labelled stream and a trainer subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka import KafkaProducer
from safetensors.numpy import load_file

from streamtrain.config import Settings, load_settings
from streamtrain.kafka import create_topics
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models import build_model
from tests.integration.process_output import REQUEST_S

FEATURES = 16


# A trainer run to the stream's end stops once no record has come for this long. A loaded
# machine (several xdist workers on two cores, or other work beside the suite) stalls fetches
# and checkpoint writes for seconds; 3 s ended a run half-way through its stream.
STOP_WHEN_IDLE_S = "8.0"
# A run told how many samples the stream holds (``run_to_end(env, samples)``) stops on the
# last one (train.max_samples) instead of waiting STOP_WHEN_IDLE_S, so a stall can never end it
# early; this idle stop remains only so a run that cannot reach the count ends (and fails its
# test) instead of running on until the test's timeout.
BACKSTOP_IDLE_S = "120"


def stop_on_the_last(samples: int) -> dict[str, float]:
    """``train`` settings for an in-process run over a stream already on its topic: stop on
    its last sample (``max_samples``), the idle stop only a backstop. A 1-2 s idle stop ended
    such runs by chance: a run whose clients share its process saw 1.6 s between two batches
    at load 28. Whether every record was read exactly once is then the checkpoint's position
    (:func:`read_to_the_end`), as an idle stop's sample count told it before."""
    return {"max_samples": samples, "stop_when_idle": float(BACKSTOP_IDLE_S)}


def read_to_the_end(root: Path, samples: int, partition: int = 0) -> None:
    """The newest checkpoint under ``root`` is at the end of a one-partition stream of
    ``samples`` records, having learned each once: a record read twice would have reached
    ``max_samples`` short of the end, one skipped would leave the count short of it."""
    meta = checkpoint_meta(root)
    assert (meta["samples_seen"], meta["offsets"]) == (samples, {str(partition): samples}), meta


def pipeline_settings(
    bootstrap: str,
    name: str,
    root: Path,
    *,
    model: dict[str, Any],
    ingest: dict[str, Any],
    train: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    serve: dict[str, Any] | None = None,
    create: tuple[str, ...] = ("dlq", "snapshots"),
) -> Settings:
    """Settings of a trainer (and server) on topics of its own, ``<name>-samples``,
    ``<name>-dlq``, ``<name>-snapshots`` (those in ``create`` made first), checkpoints under
    ``root``, training on the CPU; the rest is what the test says."""
    create_topics(bootstrap, [f"{name}-{topic}" for topic in create])
    overrides: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {
            "samples": f"{name}-samples",
            "dead_letter": f"{name}-dlq",
            "snapshots": f"{name}-snapshots",
        },
        "ingest": ingest,
        "model": model,
        # On the CPU unless the test says otherwise: on a CUDA machine `auto` would train on
        # the GPU, and tests compare the trainer's tensors with CPU ones.
        "train": {"checkpoint_dir": root, "device": "cpu", **(train or {})},
    }
    if optimizer is not None:
        overrides["optimizer"] = optimizer
    if serve is not None:
        overrides["serve"] = serve
    return load_settings(overrides=overrides)


def hyperplane_stream(
    count: int, seed: int = 0, drift_at: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable binary samples; the hyperplane flips at ``drift_at`` (concept drift)."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=FEATURES)
    x = rng.uniform(-1, 1, size=(count, FEATURES)).astype(np.float32)
    y = (x @ normal > 0).astype(np.int64)
    if drift_at is not None:
        y[drift_at:] = 1 - y[drift_at:]
    return x, y


def produce_id_samples(bootstrap: str, topic: str, count: int, seed: int) -> None:
    """``count`` samples for the embedding example (two Zipf-drawn IDs under 500, two dense
    features, the label the first ID's parity), produced with an independent client."""
    rng = np.random.default_rng(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(count):
        ids = rng.zipf(1.5, size=2) % 500
        features = [float(ids[0]), float(ids[1]), *rng.normal(size=2).tolist()]
        body = {"features": features, "label": int(ids[0] % 2), "timestamp": 1.7e9 + i}
        producer.send(topic, json.dumps(body).encode())
    producer.flush()
    producer.close()


def produce_json(
    bootstrap: str,
    topic: str,
    x: np.ndarray,
    y: np.ndarray,
    malformed_every: int | None = None,
    partitions: int = 1,
) -> int:
    """Produce samples with an independent client, round-robin over ``partitions`` with the
    producer's own record timestamps (many equal); returns the valid sample count."""
    create_topics(bootstrap, [topic], partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, (features, label) in enumerate(zip(x, y, strict=True)):
        body = {"features": features.tolist(), "label": int(label), "timestamp": 1.7e9 + i}
        partition = i % partitions
        producer.send(topic, json.dumps(body).encode(), partition=partition)
        if malformed_every and i % malformed_every == 0:
            producer.send(topic, b"\x00not json", partition=partition)
    producer.flush()
    producer.close()
    return len(x)


def dlrm_env(sparse: list[dict[str, object]], params: Mapping[str, Any]) -> dict[str, str]:
    """A ``dlrm`` trainer's environment: binary, 4 dense features beside ``sparse``, Adagrad,
    batches of 32, a checkpoint every 7 steps (2 kept), stopping after 3 s without samples."""
    return {
        "STREAMTRAIN_MODEL__NAME": "dlrm",
        "STREAMTRAIN_MODEL__TASK": "binary",
        "STREAMTRAIN_MODEL__INPUT_SHAPE": "[4]",
        "STREAMTRAIN_MODEL__SPARSE": json.dumps(sparse),
        "STREAMTRAIN_MODEL__PARAMS": json.dumps(params),
        "STREAMTRAIN_OPTIMIZER__NAME": "adagrad",
        "STREAMTRAIN_OPTIMIZER__LR": "0.05",
        "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
        "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "7",
        "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
        "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
        "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
    }


def produce_sparse_json(
    bootstrap: str, topic: str, samples: list[dict[str, object]], junk_every: int | None = None
) -> None:
    """JSON samples with sparse IDs, alternating over a new topic's two partitions; with
    ``junk_every``, a sample naming an undeclared sparse feature after every so many (it is
    dead-lettered, never learned)."""
    create_topics(bootstrap, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, sample in enumerate(samples):
        producer.send(topic, json.dumps(sample).encode(), partition=i % 2)
        if junk_every and i % junk_every == 0:
            producer.send(topic, b'{"features":[0,0,0,0],"label":1,"sparse":{"x":[1]}}')
    producer.flush()
    producer.close()


def untrained_dlrm(spec: SampleSpec, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The weights a ``dlrm`` trainer starts from (seed 0)."""
    torch.manual_seed(0)
    return {
        k: v.detach().numpy() for k, v in build_model("dlrm", spec, params).state_dict().items()
    }


def dlrm_log_loss(
    spec: SampleSpec,
    params: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    samples: list[dict[str, object]],
) -> float:
    """Binary log loss of a ``dlrm`` holding ``weights`` on JSON samples with sparse IDs."""
    model = build_model("dlrm", spec, params)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    model.eval()
    x = torch.tensor([s["features"] for s in samples], dtype=torch.float32)
    sparse = {
        f.name: JaggedTensor.from_lists([s["sparse"][f.name] for s in samples])  # type: ignore[index]
        for f in spec.sparse
    }
    y = torch.tensor([s["label"] for s in samples], dtype=torch.float32)
    with torch.no_grad():
        logits = model(x, sparse)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))


def trainer_env(
    bootstrap: str, name: str, checkpoint_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMTRAIN_TOPICS__SAMPLES": f"{name}-samples",
        "STREAMTRAIN_TOPICS__DEAD_LETTER": f"{name}-dlq",
        "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}-snapshots",
        "STREAMTRAIN_INGEST__GROUP_ID": f"{name}-group",
        "STREAMTRAIN_MODEL__NAME": "mlp",
        "STREAMTRAIN_MODEL__INPUT_SHAPE": f"[{FEATURES}]",
        "STREAMTRAIN_MODEL__NUM_CLASSES": "2",
        "STREAMTRAIN_TRAIN__CHECKPOINT_DIR": str(checkpoint_dir),
        "STREAMTRAIN_TRAIN__METRICS_PORT": "0",
        "STREAMTRAIN_TRAIN__DEVICE": "cpu",  # as pipeline_settings: the same on a CUDA machine
        # A fetch slower than the default 1 s on a loaded machine cuts a partial batch, where
        # bit-identity does not hold (README, guarantee 1); the tests' backlogs are all on the
        # log already, so waiting longer only removes that case from replay comparisons.
        "STREAMTRAIN_INGEST__MAX_PARTITION_IDLE_MS": "60000",
    }
    env.update(extra or {})
    return env


def start_trainer(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamtrain.cli", "train", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def latest_checkpoint(root: Path) -> Path:
    done = sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists())
    assert done, f"no checkpoint under {root}: {list(root.iterdir())}"
    return done[-1]


def checkpoint_weights(root: Path) -> dict[str, np.ndarray]:
    return load_file(str(latest_checkpoint(root) / "model.safetensors"))


def checkpoint_state(root: Path) -> dict[str, object]:
    """Everything the newest checkpoint holds that a replay must reproduce: every tensor
    (model, optimizer, scheduler, RNG), the optimizer and scheduler documents, and the step,
    sample count and offsets. Run id and times are left out."""
    newest = latest_checkpoint(root)
    state: dict[str, object] = {}
    for file in sorted(newest.glob("*.safetensors")):
        for name, tensor in load_file(str(file)).items():
            state[f"{file.stem}/{name}"] = tensor
    for name in ("optimizer.json", "scheduler.json"):
        if (newest / name).exists():
            state[name] = json.loads((newest / name).read_text())
    meta = json.loads((newest / "meta.json").read_text())
    state["position"] = {k: meta[k] for k in ("step", "samples_seen", "offsets")}
    return state


def assert_same_state(expected: Mapping[str, object], actual: Mapping[str, object]) -> None:
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        other = actual[name]
        if isinstance(value, np.ndarray):
            assert isinstance(other, np.ndarray) and value.dtype == other.dtype, name
            assert value.tobytes() == other.tobytes(), f"{name} differs"
        else:
            assert value == other, f"{name} differs: {value} != {other}"


def checkpoint_meta(root: Path) -> dict[str, object]:
    meta = json.loads((latest_checkpoint(root) / "meta.json").read_text())
    assert isinstance(meta, dict)
    return meta


def scrape(url: str) -> dict[str, float]:
    """Samples of a real /metrics endpoint as {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=REQUEST_S) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for_metric(url: str, name: str, above: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrape(url).get(name, float("-inf")) > above:
            return True
        time.sleep(0.1)
    return False


def run_to_end(env: Mapping[str, str], samples: int | None = None) -> str:
    """Run a trainer until it stops by itself, asserting a clean exit; its output. With
    ``samples`` (every valid sample of the stream) it stops on learning the last of them, and
    must have stopped so; without, after STOP_WHEN_IDLE_S without input."""
    if samples is not None:
        env = {
            **env,
            "STREAMTRAIN_TRAIN__MAX_SAMPLES": str(samples),
            "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": BACKSTOP_IDLE_S,
        }
    process = start_trainer(env)
    # Far above a run here (20-60 s niced at load 10-15): a deadline to report a hang by,
    # below the suite's 900 s per-test timeout.
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output
    if samples is not None:
        assert "stopped (max_samples)" in output, output
    return output


def newest_step(root: Path) -> int:
    """The step of the newest complete checkpoint under ``root`` (-1 when there is none)."""
    steps = [int(p.parent.name.split("-")[1]) for p in root.glob("step-*/meta.json")]
    return max(steps, default=-1)


def wait_for_checkpoint_at_least(root: Path, step: int, timeout: float) -> int:
    """Wait until a run has written a checkpoint at ``step`` or later: it is training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = newest_step(root)
        if newest >= step:
            return newest
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} or later in {root} within {timeout} s")


def kill_repeatedly(
    env: Mapping[str, str], root: Path, total_steps: int, kills: int, rng: random.Random
) -> list[int]:
    """Start and ``kill -9`` a trainer ``kills`` times; the newest checkpoint step at each kill.

    Kill points are random steps spread over the stream, each in its own slice of it, rather
    than random times: a fast machine would otherwise finish the whole stream between two
    timed kills and leave nothing to recover.
    """
    width = total_steps // (kills + 1)
    assert width >= 6, f"{total_steps} steps are too few for {kills} spread kills"
    killed_after: list[int] = []
    # No idle stop before the kill: a stall on a loaded machine must not end a run short of
    # its target (the backstop only ends one that hangs).
    env = {**env, "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": BACKSTOP_IDLE_S}
    for i in range(kills):
        target = (i + 1) * width + rng.randint(-width // 3, width // 3)
        process = start_trainer(env)
        # Start-up and the steps to the target: 15-40 s here niced at load 10-15; CI's
        # slower, loaded machine took up to 3x that. Waiting longer costs nothing.
        killed_after.append(wait_for_checkpoint_at_least(root, target, 400))
        time.sleep(rng.uniform(0.0, 0.02))  # a random point within the next steps
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=120)
    assert killed_after == sorted(set(killed_after)), "each run resumed and made progress"
    assert killed_after[-1] < total_steps, "the last kill landed before the end of the stream"
    return killed_after


def reference_run(
    bootstrap: str, name: str, root: Path, env: Mapping[str, str], samples_seen: int
) -> dict[str, object]:
    """An uninterrupted trainer (its own group and snapshots topic) run to the stream's end,
    having seen ``samples_seen`` samples; its checkpointed state."""
    env = {
        **env,
        "STREAMTRAIN_INGEST__GROUP_ID": f"{name}-ref",
        "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}-snapshots-ref",
    }
    output = run_to_end(trainer_env(bootstrap, name, root, env), samples_seen)
    state = checkpoint_state(root)
    position = state["position"]
    assert isinstance(position, dict) and position["samples_seen"] == samples_seen, output
    return state


def assert_recovers_from_kill_9(
    bootstrap: str,
    name: str,
    root: Path,
    env: Mapping[str, str],
    reference: Path,
    expected: Mapping[str, object],
) -> None:
    """A trainer ``kill -9``-ed three times over the stream (as long as ``reference``'s run),
    then run to the end, ends with the ``expected`` state bit for bit."""
    crashing = trainer_env(bootstrap, name, root, env)
    total_steps = checkpoint_meta(reference)["step"]
    assert isinstance(total_steps, int)
    kill_repeatedly(crashing, root, total_steps, 3, random.Random(11))
    position = expected["position"]
    assert isinstance(position, dict)
    run_to_end(crashing, position["samples_seen"])
    assert_same_state(expected, checkpoint_state(root))


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a ``--nproc`` job becomes torchrun: its ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has exited: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextmanager
def killed_on_exit(job: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Whatever a test asserts, leave nothing of a ``--nproc`` job behind: its ranks (torchrun
    starts each in a session of its own, out of reach of a process-group signal) and then
    torchrun itself are killed on the way out."""
    try:
        yield job
    finally:
        if job.poll() is None:
            for rank in child_pids(job.pid):
                with suppress(ProcessLookupError):  # it may just have exited
                    os.kill(rank, signal.SIGKILL)
            job.kill()
        job.communicate()
