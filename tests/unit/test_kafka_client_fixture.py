"""The ``kafka_client`` fixture (tests/conftest.py): a test marked ``kafka_client`` runs once
with each client library in the same session, and the library is in the environment that
settings-built clients and the processes a test starts read; any other test gets the default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamtrain.config import load_settings


def _pinned() -> str | None:
    return os.environ.get("STREAMTRAIN_TEST_KAFKA_CLIENT")


@pytest.mark.kafka_client
def test_a_marked_test_runs_with_each_library_and_its_processes_see_it(
    request: pytest.FixtureRequest, kafka_client: str
) -> None:
    if _pinned() is None:
        callspec = getattr(request.node, "callspec", None)
        assert callspec is not None, "a kafka_client test was not parametrized by library"
        assert callspec.params["kafka_client"] == kafka_client
        assert request.node.name.endswith(f"[{kafka_client}]"), request.node.name
    else:
        assert kafka_client == _pinned()
    assert os.environ["STREAMTRAIN_KAFKA__CLIENT"] == kafka_client
    assert load_settings(None).kafka.client == kafka_client
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['STREAMTRAIN_KAFKA__CLIENT'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.strip() == kafka_client


def test_an_unmarked_test_runs_once_with_the_default_library(
    request: pytest.FixtureRequest, kafka_client: str
) -> None:
    assert not hasattr(request.node, "callspec"), request.node.name
    assert kafka_client == (_pinned() or "confluent")
    assert os.environ["STREAMTRAIN_KAFKA__CLIENT"] == kafka_client
