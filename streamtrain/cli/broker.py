"""`streamtrain broker`: run the embedded Kafka-protocol broker in the foreground."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading

import typer

from streamtrain.broker import CLIENT_ENV, BrokerUnavailable, EmbeddedBroker, find_broker_binary
from streamtrain.cli.command import app
from streamtrain.cli.common import ExitCode, fail
from streamtrain.config.sections import KAFKA_TOPIC


@app.command(short_help="Run the embedded in-memory Kafka broker until Ctrl-C.")
def broker(
    port: int = typer.Option(
        9092, min=0, max=65535, help="Loopback port to listen on (0 picks a free one)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    topic: list[str] = typer.Option([], help="Topic to create on start (repeatable)."),
    partitions: int = typer.Option(1, min=1, help="Partitions of each --topic."),
) -> None:
    """Run the embedded broker (in-memory: a restart loses every topic) until Ctrl-C."""
    _check_flags(host, topic)
    try:
        find_broker_binary()
    except BrokerUnavailable as exc:
        fail(str(exc), ExitCode.MISSING_EXTRA)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with EmbeddedBroker(port=port, host=host) as embedded:
            if topic:
                embedded.create_topics(topic, partitions=partitions)
            typer.echo(f"bootstrap servers: {embedded.bootstrap_servers}", color=False)
            typer.echo(f"export STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
            # Longer fetch waits keep clients fed as the in-memory log grows (docs/operations.md,
            # "The embedded broker").
            for name, value in CLIENT_ENV.items():
                typer.echo(f"export {name}={value}")
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    except BrokerUnavailable as exc:  # the port is taken, or the broker did not start
        fail(str(exc), ExitCode.LOCAL_RESOURCE)


def _check_flags(host: str, topics: list[str]) -> None:
    """One line for a host or topic the broker would take badly: an unresolvable host was a
    traceback (or, with a fixed port, "is the port in use?"), a bad topic name was created."""
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:  # UnicodeError: not text, or a label over 63
        why = getattr(exc, "strerror", None) or exc
        fail(f"--host {host!r} is not an address to listen on: {why}")
    for name in topics:
        if not re.match(KAFKA_TOPIC, name) or name in (".", ".."):
            fail(
                f"--topic {name!r} is not a Kafka topic name: 1 to 249 of A-Z a-z 0-9 . _ -"
                " (not '.' or '..')"
            )
