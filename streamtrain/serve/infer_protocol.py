"""The serving worker's HTTP protocol: infer requests answered by the data plane directly,
everything else by the ASGI app.

Profiled per request (bench/README.md, Serve), the ASGI path spends more CPU around an infer
call than in it: uvicorn's request cycle (a task, an event, the ASGI messages and its header
checks), Starlette's middleware, router, ``Request`` and ``Response``. For
``POST /v2/models/<name>[/versions/<v>]/infer``, :class:`InferRouteProtocol` keeps uvicorn's
parsing and connection handling and skips the rest: the body is gathered as the parser hands
it over, and once it is whole the request is answered by
:class:`~streamtrain.serve.protocol.infer_route.InferRoute` in the same event-loop turn (a
forward that waits for a thread or a batch continues in a task), the answer leaving in one
write.

What stays as on the ASGI path, because it is uvicorn's code or mirrored from it:

1. parsing, keep-alive and its timeout, HTTP/1.0, chunked request bodies, TLS, the 64 KiB
   head bound (:class:`~streamtrain.serve.transport.OneWriteHttpToolsProtocol`);
2. pipelining: an infer request behind an unanswered one waits in uvicorn's pipeline and is
   started by uvicorn's ``on_response_complete``, in order with ASGI requests;
3. ``Expect: 100-continue`` is answered when the request's turn comes and its body is awaited;
4. a body over ``max_body_bytes`` (declared or as it arrives) is answered 413 at once, the
   rest of it discarded, and only what arrived up to the limit is held;
5. a client that leaves before its body is whole is counted ``client_disconnected``;
6. a drain on SIGTERM closes the connection after the answer in flight (uvicorn's
   ``shutdown`` reads the same cycle fields);
7. metrics, statistics and the prediction log: the data plane's, as for every transport;
8. uvicorn's access log line, when its logger is on.

Anything else goes to the app unchanged: other routes and methods, a path with ``%`` escapes,
an upgrade, a ``limit_concurrency`` setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.serve.protocol.bodies import BINARY_HEADER, ProtocolError
from streamtrain.serve.protocol.infer_route import Answer, InferBody, InferRoute
from streamtrain.serve.transport import OneWriteHttpToolsProtocol

log = logging.getLogger(__name__)

_BINARY_HEADER = BINARY_HEADER.lower().encode()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _NoEvent:
    """uvicorn's ``connection_lost`` sets its cycle's event; an infer cycle awaits none."""

    @staticmethod
    def set() -> None:
        return None


_NO_EVENT = _NoEvent()


class InferCycle:
    """One infer request on a connection: the fields uvicorn's protocol reads of a cycle
    (``response_complete``, ``disconnected``, ``keep_alive``, ``message_event``) and the body
    as it arrives. ``started`` is its turn (the answers before it are out); it is answered
    once started and either whole or refused."""

    __slots__ = (
        "binary_header",
        "body",
        "disconnected",
        "encoding",
        "expect_100",
        "failure",
        "keep_alive",
        "message_event",
        "more_body",
        "name",
        "received",
        "response_complete",
        "running",
        "started",
        "version",
    )

    def __init__(
        self, name: str, version: str | None, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.name, self.version, self.keep_alive = name, version, keep_alive
        self.encoding: str | None = None
        self.binary_header: str | None = None
        self.expect_100 = False
        for key, value in headers:  # the first of a repeated header, as Starlette's .get
            if key == b"content-encoding" and self.encoding is None:
                self.encoding = value.decode("latin-1")
            elif key == _BINARY_HEADER and self.binary_header is None:
                self.binary_header = value.decode("latin-1")
            elif key == b"expect" and value.lower() == b"100-continue":
                self.expect_100 = True
        self.body = bytearray()
        self.received = 0
        self.failure: ProtocolError | None = None
        self.more_body = True
        self.started = self.running = False
        self.response_complete = self.disconnected = False
        self.message_event = _NO_EVENT

    async def arrived(self) -> InferBody:
        """The body, or the ProtocolError that stands for it (too large, client gone)."""
        if self.failure is not None:
            raise self.failure
        if self.disconnected and self.more_body:
            raise ProtocolError(
                "client disconnected before the request body was complete",
                outcome="client_disconnected",
            )
        return InferBody(bytes(self.body), self.encoding, self.binary_header)


class InferRouteProtocol(OneWriteHttpToolsProtocol):
    """uvicorn's httptools protocol (one write per response) with infer requests answered by
    ``route``; build a bound class with :func:`infer_route_protocol`."""

    route: InferRoute

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._idle_since: float | None = None
        self._default_headers: list[tuple[bytes, bytes]] | None = None
        self._default_head = b""
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        # uvicorn builds the request's ASGI scope here (a dict of ten entries and a copy of the
        # app state); an infer request never reads it, so it is built only for the app.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        cycle = self._infer_cycle()
        if cycle is None:
            url, expect_100, headers = self.url, self.expect_100_continue, self.headers
            super().on_message_begin()  # uvicorn's scope, over a fresh url, flag and header list
            self.url, self.expect_100_continue = url, expect_100
            self.headers.extend(headers)  # the list the scope holds
            super().on_headers_complete()
            return
        self._reading_head = False
        existing, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._begin(cycle)
        else:  # uvicorn's pipeline: started by on_response_complete after the one before
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _infer_cycle(self) -> InferCycle | None:
        if self.parser.get_method() != b"POST" or self.limit_concurrency is not None:
            return None
        if self.parser.should_upgrade():
            return None
        url = self.url
        # origin form without query or fragment (every client's infer request) is its own path
        plain = url[:1] == b"/" and b"?" not in url and b"#" not in url
        found = self.route.match(url if plain else httptools.parse_url(url).path)
        if found is None:
            return None
        size: int | None = 0
        for key, value in self.headers:
            if key == b"content-length":
                size = parse_ascii_int(value) if value else 0
                break
        if size is None or size > self.route.max_body_bytes:
            return None  # the app answers 413 (or its error) before reading, as it always did
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return InferCycle(*found, self.headers, keep_alive)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(cycle, InferCycle):
            # From uvicorn's on_response_complete, inside the answer before: on the next
            # turn, so a long pipeline of infer requests is a loop, not a recursion.
            self.loop.call_soon(self._begin, cycle)
        else:
            super()._start_asgi_task(cycle, app)

    def _begin(self, cycle: InferCycle) -> None:
        cycle.started = True
        if cycle.expect_100 and not self.transport.is_closing():
            self.transport.write(_CONTINUE)  # uvicorn's receive() does, whatever has arrived
        if cycle.more_body and cycle.failure is None and not cycle.disconnected:
            self.flow.resume_reading()
            return
        self._answer(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, InferCycle):
            super().on_body(body)
            return
        if cycle.response_complete or cycle.failure is not None:
            return  # answered or refused: the rest is read and dropped
        cycle.received += len(body)
        if cycle.received > self.route.max_body_bytes:
            cycle.failure = self.route.too_large(cycle.received)
            cycle.body = bytearray()
            if cycle.started:
                self._answer(cycle)
            return
        cycle.body += body

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not isinstance(cycle, InferCycle):
            super().on_message_complete()
            return
        self._reading_head, self._head_bytes = True, 0  # what follows is the next request's
        if cycle.response_complete or not cycle.more_body:
            return
        cycle.more_body = False
        if cycle.started and not cycle.running:
            self._answer(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        cycle = self.cycle
        if isinstance(cycle, InferCycle) and cycle.started and not cycle.running:
            self._answer(cycle)  # counted as client_disconnected; nothing is written

    def _answer(self, cycle: InferCycle) -> None:
        """Answer ``cycle`` now; a forward that has to wait continues in a task."""
        cycle.running = True
        respond = self._respond(cycle)
        try:
            waiting = respond.send(None)
        except StopIteration:
            return
        task = self.loop.create_task(_Resume(respond, waiting).wait())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _respond(self, cycle: InferCycle) -> None:
        try:
            answer = await self.route.answer(cycle.name, cycle.version, cycle.arrived)
            data = self._encode(answer, cycle)
        except Exception:  # our own fault past the data plane's: a 500 in the JSON error body
            log.exception("answering an infer request failed")
            cycle.keep_alive = False
            body = b'{"error":"internal error answering the infer request (logged)"}'
            json_type = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            answer = Answer(500, body, json_type)
            data = self._encode(answer, cycle)
        if cycle.disconnected:
            return  # as uvicorn's send: nobody to answer, the connection is gone
        # uvicorn's access logger has a handler even at log_level "warning": the line's
        # arguments (client address, URL, version) are built only when it would be written.
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            self.access_logger.info(
                '%s - "POST %s HTTP/%s" %d',
                f"{self.client[0]}:{self.client[1]}" if self.client else "",
                self.url.decode("latin-1"),
                self.parser.get_http_version() if self.parser else "1.1",
                answer.status,
            )
        self.transport.write(data)
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    # uvicorn arms a keep-alive timer after every answer and cancels it on the next bytes (two
    # timer operations per request); here one timer per idle period, re-armed for the time
    # left when it fires early. Same rule: close after ``timeout_keep_alive`` seconds of no
    # request, never while a request is arriving or being answered.
    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: the next answer arms the timer again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def _encode(self, answer: Answer, cycle: InferCycle) -> bytes:
        """Status line, uvicorn's default headers, the answer's, ``connection: close`` when
        the connection ends after it: the bytes uvicorn writes for the same ASGI response."""
        parts = [STATUS_LINE[answer.status], self._default_head_bytes()]
        for name, value in answer.headers:
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", answer.body)
        return b"".join(parts)

    def _default_head_bytes(self) -> bytes:
        """uvicorn's default headers (server, date) as bytes, laid out again only when uvicorn
        replaces its list (once a second, for the date)."""
        defaults = self.server_state.default_headers
        if defaults is not self._default_headers:
            self._default_headers = defaults
            self._default_head = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        return self._default_head


class _Resume:
    """The rest of a coroutine that was started by hand and suspended on ``waiting`` (what it
    yielded for the event loop), run as a task: the loop waits on ``waiting`` for it, then
    steps it on, passing in what the task is thrown (a cancellation)."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coroutine = coroutine
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting = self._waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # handed to the coroutine, as a task does
                try:
                    waiting = self._coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = self._coroutine.send(None)
                except StopIteration:
                    return

    async def wait(self) -> None:
        await self


def infer_route_protocol(route: InferRoute) -> type[InferRouteProtocol]:
    """The protocol class (``uvicorn.Config``'s ``http``) answering infer requests by
    ``route``."""
    return type("BoundInferRouteProtocol", (InferRouteProtocol,), {"route": route})
