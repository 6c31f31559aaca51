"""Everything the demo starts, decided up front from one dataset: ports, paths, env, commands.

Trainer and server get the same model settings through the same environment variables, derived
from the dataset's SampleSpec, so the server never refuses a snapshot as a config mismatch.

>>> plan = DemoPlan.build("hyperplane", rate=2000, run_dir=Path("runs/x"),
...                       bootstrap_servers="127.0.0.1:9092", server_port=8000, trainer_port=9100)
>>> plan.model_env["STREAMTRAIN_MODEL__NAME"], plan.model_env["STREAMTRAIN_MODEL__INPUT_SHAPE"]
('mlp', '[16]')
>>> plan.infer_url
'http://127.0.0.1:8000/v2/models/streamtrain/infer'
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtrain.broker import CLIENT_ENV, PRODUCER_LINGER_MS, free_port
from streamtrain.config import TopicSettings
from streamtrain.datasets import DatasetInfo
from streamtrain.demo.delayed import (
    LABEL_DELAY_MAX_SECONDS,
    LABEL_DELAY_MIN_SECONDS,
    LabelMode,
    delayed_env,
)
from streamtrain.demo.drift import demo_dataset
from streamtrain.sample.spec import SampleSpec

MODEL_NAME = "streamtrain"
# The producer runs until the demo stops it; a count it can never reach in practice.
ENDLESS = 10**12
SNAPSHOT_EVERY_SECONDS = 1.0


def model_for(spec: SampleSpec) -> str:
    """The built-in model that suits a feature shape: a CNN for images, an MLP otherwise."""
    return "cnn" if len(spec.feature_shape) == 3 else "mlp"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(requested: int) -> tuple[int, bool]:
    """``requested`` when it is free, else a free one; the flag says whether it fell back."""
    if requested and port_is_free(requested):
        return requested, False
    return free_port(), requested != 0


def infer_body(features: Sequence[float], feature_shape: tuple[int, ...]) -> dict[str, Any]:
    """An Open Inference Protocol request for one row (values rounded to keep it short)."""
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [1, *feature_shape],
                "datatype": "FP32",
                "data": [round(float(v), 4) for v in features],
            }
        ]
    }


def curl_command(url: str, body: dict[str, Any]) -> str:
    """A one-line, paste-ready curl invocation posting ``body`` as JSON to ``url``."""
    payload = json.dumps(body, separators=(",", ":"))
    return (
        f"curl -s -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(payload)}"
    )


@dataclass(frozen=True)
class DemoPlan:
    """Ports, URLs, log paths and the three commands of one demo run."""

    dataset: DatasetInfo
    model: str
    rate: float
    run_dir: Path
    bootstrap_servers: str
    server_port: int
    trainer_port: int
    seed: int = 0
    drift_every: int | None = None
    labels: LabelMode = "inline"
    """``delayed``: the server logs predictions, a join attaches labels sent later (labels.md)."""
    join_port: int = 0

    @classmethod
    def build(
        cls,
        dataset: str,
        *,
        rate: float,
        run_dir: Path,
        bootstrap_servers: str,
        server_port: int,
        trainer_port: int,
        seed: int = 0,
        labels: LabelMode = "inline",
        join_port: int = 0,
    ) -> DemoPlan:
        info, drift_every = demo_dataset(dataset, rate)
        return cls(
            info,
            model_for(info.spec),
            rate,
            run_dir,
            bootstrap_servers,
            server_port,
            trainer_port,
            seed,
            drift_every,
            labels,
            join_port,
        )

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def key_dir(self) -> Path:
        """Where the runner writes the demo's throwaway signing key pair."""
        return self.run_dir / "keys"

    @property
    def topics(self) -> TopicSettings:
        return TopicSettings()

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def infer_url(self) -> str:
        return f"{self.server_url}/v2/models/{MODEL_NAME}/infer"

    @property
    def ready_url(self) -> str:
        return f"{self.server_url}/v2/health/ready"

    @property
    def trainer_ready_url(self) -> str:
        return f"http://127.0.0.1:{self.trainer_port}/health/ready"

    @property
    def server_metrics_url(self) -> str:
        return f"{self.server_url}/metrics"

    @property
    def trainer_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.trainer_port}/metrics"

    @property
    def model_env(self) -> dict[str, str]:
        """The model settings trainer and server must share, as environment variables."""
        spec = self.dataset.spec
        return {
            "STREAMTRAIN_MODEL__NAME": self.model,
            "STREAMTRAIN_MODEL__TASK": spec.task,
            "STREAMTRAIN_MODEL__INPUT_SHAPE": json.dumps(list(spec.feature_shape)),
            "STREAMTRAIN_MODEL__NUM_CLASSES": str(spec.num_classes),
            "STREAMTRAIN_MODEL__TARGET_DIM": str(spec.target_dim),
        }

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.model_env)
        env["STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        env["STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS"] = str(SNAPSHOT_EVERY_SECONDS)
        # The embedded broker's fetches slow with the number of record batches in a partition
        # (docs/operations.md, "The embedded broker"): fewer, larger batches (the producer's
        # --linger-ms) and longer fetch waits keep trainer and server fed for hours.
        for name, value in CLIENT_ENV.items():
            env.setdefault(name, value)
        # Signed end to end with the throwaway pair in key_dir: the server refuses anything
        # the demo's trainer did not sign (docs/snapshots.md, trust).
        env["STREAMTRAIN_TRAIN__SIGNING_KEY"] = str(self.key_dir / "trainer.key")
        env["STREAMTRAIN_SERVE__TRUSTED_KEYS"] = json.dumps([str(self.key_dir / "trainer.pub")])
        # Broker, producer, trainer and server share the machine: one torch thread each keeps
        # the small demo models fast instead of thrashing; a higher rate than Adam's default
        # makes learning visible within seconds.
        env.setdefault("STREAMTRAIN_TRAIN__TORCH_THREADS", "1")
        env.setdefault("STREAMTRAIN_OPTIMIZER__LR", "0.005")
        # Log lines reach the files as they happen, so a crash's tail is complete.
        env["PYTHONUNBUFFERED"] = "1"
        if self.labels == "delayed":
            env.update(delayed_env())
        return env

    @property
    def ready_urls(self) -> dict[str, str]:
        """What must answer 200 before the producer starts (step 3 of the runner)."""
        urls = {"trainer": self.trainer_ready_url}
        if self.labels == "delayed":
            urls["join"] = self.join_ready_url
        return urls

    @property
    def join_state_dir(self) -> Path:
        return self.run_dir / "join-state"

    @property
    def join_ready_url(self) -> str:
        return f"http://127.0.0.1:{self.join_port}/health/ready"

    @property
    def join_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.join_port}/metrics"

    @property
    def status_path(self) -> Path:
        """Where the delayed-labels application writes what it did (``label_app``)."""
        return self.run_dir / "app-status.json"

    @property
    def topic_names(self) -> list[str]:
        """Every topic the run uses, created before any process starts."""
        t = self.topics
        names = [t.samples, t.dead_letter, t.snapshots]
        if self.labels == "delayed":
            names += [t.predictions, t.labels, t.labels_dead_letter]
        return names

    def commands(self) -> dict[str, list[str]]:
        """Start order: server (waits for snapshots), trainer, the join with delayed labels,
        then the producer feeding them (with delayed labels: the application of label_app)."""
        cli = [sys.executable, "-m", "streamtrain.cli"]
        servers = ["--bootstrap-servers", self.bootstrap_servers]
        commands = self._pipeline_commands(cli, servers)
        if self.labels == "delayed":
            del commands["producer"]
            commands["join"] = self._join_command(cli)
            commands["producer"] = self._app_command()
        return commands

    def _join_command(self, cli: list[str]) -> list[str]:
        """``streamtrain join`` on the run's broker, its state in the run directory, its
        metrics and health on ``join_port``."""
        return [
            *cli,
            "join",
            "--bootstrap-servers",
            self.bootstrap_servers,
            "--state-dir",
            str(self.join_state_dir),
            "--metrics-port",
            str(self.join_port),
        ]

    def _app_command(self) -> list[str]:
        """The application that predicts over HTTP and sends each label after a delay."""
        return [
            sys.executable,
            "-m",
            "streamtrain.demo.label_app",
            "--infer-url",
            self.infer_url,
            "--bootstrap-servers",
            self.bootstrap_servers,
            "--dataset",
            self.dataset.name,
            "--rate",
            f"{self.rate:g}",
            "--samples-topic",
            self.topics.samples,
            "--labels-topic",
            self.topics.labels,
            "--status-path",
            str(self.status_path),
            "--delay-min",
            f"{LABEL_DELAY_MIN_SECONDS:g}",
            "--delay-max",
            f"{LABEL_DELAY_MAX_SECONDS:g}",
            "--seed",
            str(self.seed),
        ]

    def _pipeline_commands(self, cli: list[str], servers: list[str]) -> dict[str, list[str]]:
        return {
            "server": [
                *cli,
                "serve",
                *servers,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.server_port),
                "--model-name",
                MODEL_NAME,
                "--snapshots-topic",
                self.topics.snapshots,
            ],
            "trainer": [
                *cli,
                "train",
                *servers,
                "--checkpoint-dir",
                str(self.checkpoint_dir),
                "--metrics-port",
                str(self.trainer_port),
            ],
            "producer": [
                *cli,
                "produce",
                *servers,
                "--dataset",
                self.dataset.name,
                "--rate",
                f"{self.rate:g}",
                "--count",
                str(ENDLESS),
                "--format",
                "binary",
                "--topic",
                self.topics.samples,
                "--seed",
                str(self.seed),
                "--linger-ms",
                str(PRODUCER_LINGER_MS),
                *(["--drift-every", str(self.drift_every)] if self.drift_every else []),
            ],
        }
