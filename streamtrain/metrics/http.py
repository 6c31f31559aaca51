"""``/metrics`` over HTTP: a registry served from a daemon thread, with extra routes beside it."""

from __future__ import annotations

import socket
import threading
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
        return route(environ, start_response)

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(address[0]), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="streamtrain-metrics", daemon=True).start()
    return server


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood stderr with access lines."""

    def log_message(self, format: str, *args: Any) -> None:
        return
