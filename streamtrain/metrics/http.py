"""``/metrics`` over HTTP: a registry served from a daemon thread, with extra routes beside it."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "0.0.0.0",
    routes: Mapping[str, WSGIApp] | None = None,
) -> WSGIServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    ``routes`` mounts more exact paths beside it (the trainer's ``/health/live`` and
    ``/health/ready``); every other path answers what prometheus_client's own server answers.
    Port 0 picks a free port; read it back from ``server.server_port``.
    """
    exposition: WSGIApp = make_wsgi_app(registry)
    extra = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = extra.get(environ.get("PATH_INFO", ""), exposition)
        method = environ.get("REQUEST_METHOD", "")
        if route is exposition and method not in ("GET", "HEAD", "OPTIONS"):
            return _method_not_allowed(method, start_response)  # prometheus_client's: text
        return route(environ, start_response)

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family
        # socketserver's backlog is 5: a burst of connections (scrapers, or 200 idle clients)
        # overflowed it and the next scrape's SYN waited a 1 s retransmit.
        request_queue_size = 1024

    server = make_server(str(address[0]), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="streamtrain-metrics", daemon=True).start()
    return server


def _method_not_allowed(method: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"error": f"405 method {method} not allowed on /metrics; use GET"}).encode()
    headers = [("Content-Type", "application/json"), ("Allow", "GET, HEAD, OPTIONS")]
    start_response("405 Method Not Allowed", [*headers, ("Content-Length", str(len(body)))])
    return [body]


class _DeadlineReader(io.RawIOBase):
    """The handler's socket as its ``rfile`` reads it: each read waits at most until the head's
    deadline, so a client sending a byte every few seconds cannot stretch it."""

    def __init__(self, handler: _QuietHandler) -> None:
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        deadline = self._handler._head_by
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request head's deadline passed")
            self._handler.connection.settimeout(left)
        return int(self._handler.connection.recv_into(buffer))


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood stderr with access lines.

    A request http.server cannot parse (a bad request line or version, a line or header over
    64 KiB, over 100 headers) gets the JSON error body the health routes and the server use,
    with a status line: http.server answered an HTML page, and none at all before it had
    read an HTTP version (a one-word request line got bare HTML, as if HTTP/0.9).

    A request line and headers not whole within ``timeout`` seconds of the connection (a
    client that stayed silent, stalled mid-head, or sent its head a byte at a time) get a 408
    in that body and the connection is closed: each connection holds a thread, and without a
    deadline such clients held theirs for ever (wsgiref then also printed the socket's timeout
    as a traceback).
    """

    default_request_version = "HTTP/1.0"
    timeout = 10.0  # seconds the request line and headers may take to arrive, in all

    def setup(self) -> None:
        super().setup()  # sets the socket timeout to ``timeout``: the first read's bound
        self._head_by: float | None = time.monotonic() + self.timeout
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def parse_request(self) -> bool:
        whole = super().parse_request()
        self._head_by = None  # the head is read: the body (never read here) has no deadline
        self.connection.settimeout(self.timeout)
        return whole

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:
            body = json.dumps(
                {"error": f"request not received within {self.timeout:g} s; connection closed"}
            ).encode()
            head = (
                "HTTP/1.0 408 Request Timeout\r\nContent-Type: application/json\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with contextlib.suppress(OSError):  # the client may be gone too
                self.connection.sendall(head.encode() + body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        short, long = self.responses.get(code, ("Error", ""))
        reason = f"{code} {message or short}" + (f": {explain or long}" if explain or long else "")
        body = json.dumps({"error": reason}).encode()
        self.close_connection = True
        self.send_response(code, short)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
