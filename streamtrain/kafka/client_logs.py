"""The client libraries' own connection reports, routed to the reachability tracker.

Both libraries report an outage once per attempt (KAFKA_NOTES: 555 lines in 29 s). Their
connection reports go to :data:`~streamtrain.kafka.reachability.REACHABILITY`, which logs
one line per change of state; everything else they log is passed on unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from streamtrain.kafka.reachability import REACHABILITY, FailureKind

# Words of kafka-python's per-attempt connection reports (ERROR/WARNING on kafka.*).
_KAFKA_PYTHON_CONNECTION = (
    "ECONNREFUSED",
    "KafkaConnectionError",
    "socket disconnected",
    "Connection failed",
    "Connection lost",
    "No node available",
    "Unable to bootstrap",
    "NodeNotReady",
    "Metadata refresh",
    "Fetch to node",
    "timed out",
    "not ready",
    "network data",
    "closing socket",
    "disconnected",
    "Abort",
)
# librdkafka error codes that mean "cannot talk to the cluster" (others are the caller's).
LIBRDKAFKA_CONNECT = {"_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT"}
_LIBRDKAFKA_REFUSED = {"_AUTHENTICATION", "_SSL", "SASL_AUTHENTICATION_FAILED"}
# librdkafka log facilities of per-attempt connection reports.
_LIBRDKAFKA_FACILITIES = ("FAIL", "ERROR", "BROKERFAIL", "CONNECT", "REQTMOUT")

_installed = threading.Lock()
_done = False


class _KafkaPythonReports(logging.Handler):
    """Receives every kafka.* record (the ``kafka`` logger stops their propagation)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._out = logging.getLogger("streamtrain.kafka.client")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(word in message for word in _KAFKA_PYTHON_CONNECTION):
            REACHABILITY.failure(f"{record.name}: {message}")
        else:
            self._out.log(record.levelno, "kafka-python: %s", message)


def route_kafka_python_logs() -> None:
    """Once per process: kafka-python's WARNING+ records go through the tracker."""
    global _done
    with _installed:
        if _done:
            return
        kafka_logger = logging.getLogger("kafka")
        kafka_logger.setLevel(logging.WARNING)
        kafka_logger.addHandler(_KafkaPythonReports())
        kafka_logger.propagate = False
        _done = True


class _LibrdkafkaReports(logging.Filter):
    """librdkafka's log lines: connection reports feed the tracker and are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, message).
        args = record.args if isinstance(record.args, tuple) else ()
        facility = str(args[0]) if args else ""
        message = record.getMessage()
        if facility in _LIBRDKAFKA_FACILITIES or "Connect to" in message:
            REACHABILITY.failure(message)
            return False
        return True


_LIBRDKAFKA_LOGGER = logging.getLogger("streamtrain.kafka.librdkafka")
_LIBRDKAFKA_LOGGER.addFilter(_LibrdkafkaReports())


def librdkafka_error_callback(
    on_fatal: Callable[[str], None] | None = None,
) -> Callable[[Any], None]:
    """An ``error_cb``: connection and login errors feed the tracker; fatal ones also go to
    ``on_fatal``; anything else is logged."""

    def on_error(error: Any) -> None:
        name = error.name()
        if error.fatal():
            if on_fatal is not None:
                on_fatal(f"fatal Kafka client error: {error.str()}")
            return
        kind: FailureKind | None = None
        if name in LIBRDKAFKA_CONNECT:
            kind = "connect"
        elif name in _LIBRDKAFKA_REFUSED:
            kind = "refused"
        if kind is None:
            logging.getLogger("streamtrain.kafka.client").warning("librdkafka: %s", error.str())
        else:
            REACHABILITY.failure(error.str(), kind)

    return on_error


def quiet_librdkafka(
    config: Mapping[str, Any], on_fatal: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """``config`` with librdkafka's log and error reports routed through the tracker."""
    return {
        **config,
        "logger": _LIBRDKAFKA_LOGGER,
        "error_cb": librdkafka_error_callback(on_fatal),
    }
