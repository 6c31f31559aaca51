"""``kill -9`` of a trainer at a random moment while it publishes, then a restart: the server
answers every request meanwhile (never a 5xx), and the versions it answers with never go back.

The model is large enough that each snapshot is several chunks on the topic (about 1.1 MB of
weights, 512 KiB chunks) and one is published every step, so the trainer is publishing most
of the time and a kill at a random moment usually leaves a snapshot half written. Checkpoints
are rarer than snapshots, so the restarted trainer resumes at a step below versions it had
already published: it must number its next versions above them (the restore looks the newest
one up on the snapshot topic), or the server would refuse them as stale and serve the old
weights for good. (A kill inside the first checkpoint write leaves none: the restart is then
a new run, whose versions must also start above the topic's newest.)
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

import httpx

from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import await_condition
from tests.integration.trainer_harness import (
    FEATURES,
    hyperplane_stream,
    produce_json,
    trainer_env,
)

BODY = {
    "inputs": [
        {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.3] * FEATURES}
    ]
}


# A request's deadline: a hang's bound only. The server runs niced beside the suite while it
# loads a 1.1 MB snapshot every step; a client that timed out would end its thread, and the
# test would then wait out a condition on versions it no longer asks for.
HTTP_S = 60.0


class Client:
    """Asks the server on a thread until stopped; keeps each answer's status and version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=HTTP_S) as client:
            while not self._stop.is_set():
                response = client.post(self.url, json=BODY)
                version = response.json().get("model_version") if response.is_success else None
                served = None if version is None else int(version)
                self.answers.append((response.status_code, served))
                self._stop.wait(0.02)  # a request rate, not a wait for anything

    def newest(self) -> int:
        return max((v for _, v in self.answers if v is not None), default=-1)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HTTP_S + 15)


def test_kill_9_while_publishing_then_restart_keeps_answers_and_versions_moving_up(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    produce_json(kafka_bootstrap, f"{unique_name}-samples", *hyperplane_stream(3000, seed=3))
    env = trainer_env(
        kafka_bootstrap,
        unique_name,
        tmp_path / "ckpt",
        {
            "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [512, 512]}',
            "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "8",
            "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_STEPS": "1",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "40",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
        },
    )
    serve = {**env, "STREAMTRAIN_SERVE__PORT": "0"}
    with running_cli(["serve"], serve) as (_, served):
        infer = await_output(served, r"infer: +POST +(\S+)")
        with running_cli(["train"], env) as (first, trained):
            await_condition(
                lambda: httpx.post(infer, json=BODY, timeout=HTTP_S).status_code == 200,
                "the server's first snapshot",
                timeout=120,
            )
            with Client(infer) as client:
                await_condition(lambda: client.newest() >= 5, "a few versions served")
                time.sleep(random.uniform(0.0, 1.5))  # the random moment of the kill
                first.kill()
                first.wait(30)
                killed_at = client.newest()
                published = trained.text()
                with running_cli(["train"], env) as (_, again):
                    await_condition(
                        lambda: client.newest() > killed_at,
                        "a version from the restarted trainer",
                        timeout=120,
                    )
                    restarted = again.text()
    statuses = {status for status, _ in client.answers}
    assert statuses == {200}, f"{statuses}: {served.text()[-3000:]}"
    versions = [v for _, v in client.answers if v is not None]
    regressions = [(a, b) for a, b in itertools.pairwise(versions) if b < a]
    assert regressions == [], f"versions went back: {regressions[:5]}"
    assert "Traceback" not in restarted + served.text(), restarted + served.text()
    assert "published base" in published, published
