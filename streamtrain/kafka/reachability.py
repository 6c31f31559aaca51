"""Is Kafka reachable? One tracker per process, fed by every client the wing builds.

Client libraries report a broker outage once per connection attempt (kafka-python logs
several ERROR lines, librdkafka a log line and an error callback, every ~50 ms to 1 s). Those
reports come here instead of the log, and the tracker turns them into:

1. one log line per change of state (reachable -> unreachable -> reachable), with the cause;
2. while unreachable, one summary line every ``summary_every_s`` (duration, failed attempts);
3. the gauge ``streamtrain_kafka_reachable`` (1/0) in every registry, and the process's
   readiness condition ``kafka`` (:mod:`streamtrain.health`).

A connection failure is confirmed with a TCP connect to a bootstrap server before the state
turns unreachable (a broker closing one idle connection is not an outage); while unreachable,
that probe runs at most once per ``probe_every_s`` from the clients' polls, and the first one
that connects turns the state back to reachable. A refused login (authentication, TLS) keeps
the state unreachable until a client gets an answer from the cluster again.

4. :attr:`Reachability.interruptions` counts the times the clients may have lost the log they
   were reading: every end of an outage, every dropped connection the probe found harmless
   (at most one per ``probe_every_s``), and every topic a client found missing. A reader
   rechecks its stored positions against the log after each
   (:mod:`streamtrain.ingest.log_watch`): a broker back on the same address may hold another log.

>>> tracker = Reachability(probe=lambda servers: False, clock=lambda: 0.0)
>>> tracker.configure("127.0.0.1:1")
>>> tracker.failure("connection refused")
>>> tracker.reachable
False
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Literal

from streamtrain import health, metrics

log = logging.getLogger("streamtrain.kafka")

FailureKind = Literal["connect", "refused"]
Probe = Callable[[str], bool]


def tcp_probe(bootstrap_servers: str, timeout_s: float = 0.5) -> bool:
    """Whether any bootstrap server accepts a TCP connection (nothing is sent)."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


class Reachability:
    """Reachability of the cluster as this process sees it; safe to use from any thread."""

    def __init__(
        self,
        summary_every_s: float = 60.0,
        probe_every_s: float = 1.0,
        probe: Probe = tcp_probe,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._summary_every_s = summary_every_s
        self._probe_every_s = probe_every_s
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._servers = ""
        self._reachable = True
        self._ever_answered = False
        self._kind: FailureKind = "connect"
        self._down_since = 0.0
        self._attempts = 0
        self._last_probe = -float("inf")
        self._last_probe_ok = True
        self._last_summary = 0.0
        self._interruptions = 0
        self._last_dismissed = -float("inf")
        self._set_signals(True, "")

    @property
    def reachable(self) -> bool:
        return self._reachable

    @property
    def servers(self) -> str:
        return self._servers

    @property
    def interruptions(self) -> int:
        """How many times the clients may have lost their logs (docstring 4.); only grows."""
        return self._interruptions

    def interrupted(self) -> None:
        """A client saw its log go away without an outage (a topic reported missing)."""
        with self._lock:
            self._interruptions += 1

    def configure(self, bootstrap_servers: str) -> None:
        self._servers = bootstrap_servers

    def failure(self, detail: str, kind: FailureKind = "connect") -> None:
        """A client reported it could not talk to the cluster (one attempt)."""
        with self._lock:
            now = self._clock()
            if not self._reachable:
                self._attempts += 1
                self._maybe_summarize(now)
                return
            if kind == "connect" and self._probe_cached(now):
                # The broker accepts connections: one connection's trouble, no outage; but it
                # may be a broker restarted within the probe's period, so logs are rechecked.
                if now - self._last_dismissed >= self._probe_every_s:
                    self._last_dismissed = now
                    self._interruptions += 1
                return
            self._reachable, self._kind = False, kind
            self._down_since, self._last_summary, self._attempts = now, now, 1
        # Never reached yet (a process starting during an outage): the call that needed
        # Kafka fails with its own one-line KafkaUnreachable, or the summaries follow.
        log.log(
            logging.WARNING if self._ever_answered else logging.DEBUG,
            "Kafka at %s is unreachable: %s (retrying; one summary every %.0f s until it is back)",
            self._servers,
            detail,
            self._summary_every_s,
        )
        self._set_signals(False, f"unreachable at {self._servers}: {detail}")

    def success(self) -> None:
        """A client got an answer from the cluster (records, metadata, an acknowledgement)."""
        if self._reachable:
            self._ever_answered = True  # the hot path: no lock, one store
            return
        self._recovered("a client got an answer")

    def check(self) -> None:
        """Called from every poll: while unreachable, probe now and then, and summarize."""
        if self._reachable:
            return
        with self._lock:
            now = self._clock()
            self._maybe_summarize(now)
            if self._kind != "connect" or now - self._last_probe < self._probe_every_s:
                return
            connected = self._probe_cached(now)
        if connected:
            self._recovered("the broker accepts connections again")

    def _probe_cached(self, now: float) -> bool:
        """The probe's answer, asked at most once per ``probe_every_s`` (lock held)."""
        if now - self._last_probe >= self._probe_every_s:
            self._last_probe = now
            self._last_probe_ok = self._probe(self._servers)
        return self._last_probe_ok

    def _maybe_summarize(self, now: float) -> None:
        if now - self._last_summary >= self._summary_every_s:
            self._last_summary = now
            log.warning(
                "Kafka at %s still unreachable after %.0f s (%d failed attempts)",
                self._servers,
                now - self._down_since,
                self._attempts,
            )

    def _recovered(self, why: str) -> None:
        with self._lock:
            if self._reachable:
                return
            now = self._clock()
            self._reachable = True
            self._ever_answered = True
            self._interruptions += 1
            # Evidence of a working cluster counts as a fresh successful probe: a connection
            # dropping in the next second is one connection's trouble, not a new outage.
            self._last_probe, self._last_probe_ok = now, True
            down_for, attempts = now - self._down_since, self._attempts
        log.warning(
            "Kafka at %s is reachable again after %.1f s (%d failed attempts; %s)",
            self._servers,
            down_for,
            attempts,
            why,
        )
        self._set_signals(True, "")

    def _set_signals(self, reachable: bool, detail: str) -> None:
        for gauge in (
            metrics.KAFKA_REACHABLE_TRAINER,
            metrics.KAFKA_REACHABLE_SERVER,
            metrics.KAFKA_REACHABLE_JOIN,
        ):
            gauge.set(1 if reachable else 0)
        health.set_condition("kafka", reachable, detail)


REACHABILITY = Reachability()
"""This process's tracker; every client built by :mod:`streamtrain.kafka.factory` feeds it."""
