"""Test tiers and the one fixture that decides where the Kafka broker comes from.

Broker choice, in order: ``STREAMTRAIN_TEST_BOOTSTRAP`` if set; testcontainers' Kafka if a
Docker engine answers; else the embedded broker. A broker that cannot be had is an error, never a
skip: integration tests must fail loudly in CI.

Client library: the ``kafka_client`` fixture is what every client the tests build through
streamtrain uses: the ``kafka_connection`` fixture carries it, and ``STREAMTRAIN_KAFKA__CLIENT``
is set while it is active so settings-built clients (in this process and in the CLI processes
tests start) use it too. ``confluent`` by default; a test marked ``kafka_client`` (its Kafka path
differs by client library) runs once with each library in the same session, ``[confluent]`` and
``[kafka-python]``. ``STREAMTRAIN_TEST_KAFKA_CLIENT`` pins one library for every test instead
(``make test-integration-kafka-python``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtrain import health
from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaClient, KafkaConnection
from streamtrain.metrics import SERVER_REGISTRY, TRAINER_REGISTRY
from tests.metrics_scrape import Exporter, exported
from tests.scheduling import halves_by_client, longest_first

_TIERS = {"unit", "integration", "gpu"}
_CLIENTS: tuple[KafkaClient, ...] = ("confluent", "kafka-python")


def _pinned_kafka_client() -> KafkaClient | None:
    chosen = os.environ.get("STREAMTRAIN_TEST_KAFKA_CLIENT")
    if chosen is None:
        return None
    for client in _CLIENTS:
        if chosen == client:
            return client
    raise pytest.UsageError(
        f"STREAMTRAIN_TEST_KAFKA_CLIENT={chosen!r}; expected one of {', '.join(_CLIENTS)}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A ``kafka_client`` test runs with each client library, unless one is pinned. Module
    scope: a module's tests run with one library, then with the other (pytest orders them so),
    and a module fixture that uses it is made again for each."""
    marked = metafunc.definition.get_closest_marker("kafka_client") is not None
    if marked and "kafka_client" in metafunc.fixturenames and _pinned_kafka_client() is None:
        metafunc.parametrize("kafka_client", _CLIENTS, indirect=True, scope="module")


@pytest.hookimpl(optionalhook=True)  # a pytest without pytest-xdist (the GPU check's) skips it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile with a module's second-library half a unit of its own (scheduling.py)."""
    if config.getoption("dist") != "loadfile":
        return None
    return halves_by_client(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    longest_first(items)
    cuda = _cuda_available()
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "gpu" and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


def _cuda_available() -> bool:
    # torch is a core dependency: a broken install fails here instead of skipping the GPU
    # tier. The skip itself is a hardware one (no CUDA device), never an install one.
    import torch

    return bool(torch.cuda.is_available())


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("STREAMTRAIN_TEST_BOOTSTRAP")
    if explicit:
        yield explicit
        return
    if os.environ.get("STREAMTRAIN_TEST_DOCKER", "1") == "1" and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session", autouse=True)
def kafka_client(request: pytest.FixtureRequest) -> Iterator[KafkaClient]:
    """The client library under test; settings-built clients follow it through the env.

    Autouse, so the variable is set before any fixture starts a process (and the broker does
    not depend on it: a change of library between modules keeps the worker's broker). A change
    of library tears this down and sets it up again, and with it every fixture that uses it."""
    param: KafkaClient | None = getattr(request, "param", None)
    client = param or _pinned_kafka_client() or "confluent"
    previous = os.environ.get("STREAMTRAIN_KAFKA__CLIENT")
    os.environ["STREAMTRAIN_KAFKA__CLIENT"] = client
    yield client
    if previous is None:
        os.environ.pop("STREAMTRAIN_KAFKA__CLIENT", None)
    else:
        os.environ["STREAMTRAIN_KAFKA__CLIENT"] = previous


@pytest.fixture
def kafka_connection(kafka_bootstrap: str, kafka_client: KafkaClient) -> KafkaConnection:
    """A connection to the test broker with the client library under test."""
    return KafkaConnection(kafka_bootstrap, client=kafka_client)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic/group name no other test uses: test name plus a random suffix."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def trainer_metrics() -> Iterator[Exporter]:
    """The trainer registry on a real ``/metrics`` for components a test runs in-process."""
    with exported(TRAINER_REGISTRY) as exporter:
        yield exporter


@pytest.fixture
def server_metrics() -> Iterator[Exporter]:
    """The server registry on a real ``/metrics`` for serving parts a test runs in-process."""
    with exported(SERVER_REGISTRY) as exporter:
        yield exporter


@pytest.fixture(autouse=True)
def _restore_health() -> Iterator[None]:
    """The process-wide readiness conditions as they were before each test: a test that
    leaves one false (a broker it made unreachable) never decides a later test's readiness."""
    saved = health.HEALTH.conditions()
    yield
    for name in health.HEALTH.conditions().keys() - saved.keys():
        health.clear_condition(name)
    for name, (ok, detail) in saved.items():
        health.set_condition(name, ok, detail)


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples/`` importable for this test only (plugin models named ``module:factory``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
