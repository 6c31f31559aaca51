"""Replicas agree: a running server and one started later serve the same version, whatever
the topic's newest records are (a poisoned snapshot, an older run's late snapshot)."""

from __future__ import annotations

import time

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from tests.integration.snapshot_harness import (
    publish,
    rejections,
    serve_settings,
    served_version,
    wait,
)


def test_old_and_new_replicas_serve_the_same_version(
    kafka_bootstrap: str, unique_name: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name)
    for version in (6, 7, 8):
        publish(settings, version)
    running = build_worker(settings)
    url = running.start()
    late = None
    try:
        wait(lambda: served_version(url) == "8", "the running replica on version 8")
        before = rejections(url)
        # The newest version holds a NaN; then an older run, still alive, writes its version 5
        # after everything else (newest by topic position and by clock, lowest by version).
        publish(settings, 9, nan=True)
        publish(settings, 5, run_id="oldrun", created_at=time.time() + 3600)

        def refused(reason: str) -> float:
            return rejections(url).get(reason, 0.0) - before.get(reason, 0.0)

        wait(lambda: refused("non_finite") == 1 and refused("stale") == 1, "both refused")
        assert served_version(url) == "8"

        late = build_worker(settings)
        late_url = late.start()
        wait(lambda: served_version(late_url) is not None, "the new replica to be ready")
        # The new replica skipped the poisoned newest version and ranked the late snapshot by
        # version, exactly as the running one did.
        assert served_version(late_url) == served_version(url) == "8"
        wait(lambda: refused("non_finite") == 2, "the new replica's own non_finite refusal")
    finally:
        running.stop()
        if late is not None:
            late.stop()
