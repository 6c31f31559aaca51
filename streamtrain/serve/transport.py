"""The HTTP connection protocol of the serving worker: uvicorn's httptools protocol, writing
each response in one ``send()``.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls; on loopback each one is a ``send()`` system call that wakes the
client, and the profile of a loaded server put half of its CPU per request there
(bench/README.md, Serve). :class:`OneWriteHttpToolsProtocol` gives uvicorn's protocol a
transport that gathers the writes made in one turn of the event loop and hands them to the
socket as one write at the end of that turn (or at once past ``_FLUSH_BYTES``, so a streamed
response still meets the socket's flow control). Everything else is uvicorn's own: parsing
(httptools), keep-alive and its timeout, chunked request bodies, ``Expect: 100-continue``,
pipelining, TLS (the coalescing sits above the TLS transport), flow control and the graceful
drain on SIGTERM. A well-kept server was preferred to a protocol of our own; besides the
coalescing, three answers differ from uvicorn's: a head over 64 KiB gets a 431, a head the
parser refuses a 400 in the JSON error body (uvicorn: text/plain), and an upgrade that is
not made is ignored, the request read on with its body (uvicorn dropped the body).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.serve.read_watch import TICK_S, ReadClock, timed_out

log = logging.getLogger(__name__)

# Past this many bytes gathered in one turn, write at once: the socket's own buffer limits and
# its pause_writing callback (uvicorn's flow control) then apply as without the gathering.
_FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """``transport`` as the protocol sees it: writes made in one event-loop turn go out as one.

    Order is kept (everything passes through one buffer); ``close`` and ``write_eof`` write
    what is gathered first; ``abort`` drops it, as the socket's own ``abort`` drops its buffer.
    Any other attribute is the wrapped transport's.
    """

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [bytes(data)]
            self._pending_bytes = len(data)
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))
            self._pending_bytes += len(data)
        if self._pending_bytes > _FLUSH_BYTES:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is gathered, as one write (nothing once the transport is closing)."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:  # asked on every answer: not through __getattr__
        return bool(self._transport.is_closing())

    def get_write_buffer_size(self) -> int:
        gathered = self._pending_bytes if self._pending is not None else 0
        return int(self._transport.get_write_buffer_size()) + gathered

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _too_large_head(limit: int) -> bytes:
    body = (
        f'{{"error": "request line and headers exceed {limit} bytes; send fewer or shorter '
        'headers"}'
    ).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _malformed_head(reason: str) -> bytes:
    # The parser's own reason ("Invalid method encountered", "Duplicate Content-Length", ...):
    # short, fixed English strings from llhttp that say what to fix. HTTP/2's preface parses
    # as a method PRI the parser pauses on; say what it is instead.
    if reason == "Pause on PRI/Upgrade":
        reason = "HTTP/2 is not served on this port, only HTTP/1.1 (gRPC has its own port)"
    document = {"error": f"malformed HTTP/1.1 request: {reason}; the connection is closed"}
    body = json.dumps(document).encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _body_framing(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The header that frames a request's body (None: it has none)."""
    for name, value in headers:
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return b"transfer-encoding: chunked"
    for name, value in headers:
        if name == b"content-length":
            size = parse_ascii_int(value.decode("latin-1"))
            return b"content-length: %d" % size if size else None
    return None


class _AfterIgnoredUpgrade:
    """The callbacks of the parser that reads on after an ignored upgrade: the protocol's,
    less the head callbacks of the stand-in head that frames the deferred body."""

    def __init__(self, protocol: OneWriteHttpToolsProtocol, stand_in_head: bool) -> None:
        self._protocol = protocol
        self._stand_in = stand_in_head

    def on_message_begin(self) -> None:
        if not self._stand_in:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._stand_in:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._stand_in:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._stand_in:
            self._protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        self._stand_in = False
        self._protocol.on_message_complete()


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport` (``uvicorn.Config``'s
    ``http``): a response's headers and body leave in one ``send()``.

    It also bounds a request's line and headers to ``MAX_HEAD_BYTES`` as they arrive (uvicorn
    bounds them only with h11; httptools buffers a header of any size): past that the client
    gets a 431 in the error body of every other answer and the connection is closed.
    A request the parser refuses (a bad method, URL, header, Content-Length or chunk size) gets
    a 400 in that error body too, naming what the parser found, instead of uvicorn's plain
    text "Invalid HTTP request received.".
    A client too slow to send its request, or one that connects and sends nothing, is timed out
    (serve/read_watch.py): a 408 in that error body, or a silent close for a silent client.
    """

    MAX_HEAD_BYTES = 64 * 1024

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deferred_body: bytes | None = None
        self._head_bytes = 0
        self._reading_head = True
        self._clock = ReadClock(self.loop.time())
        self._watch: asyncio.TimerHandle | None = self.loop.call_later(TICK_S, self._check_read)
        coalescing = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def _check_read(self) -> None:
        """Once a tick: time the connection out if its client breaks a read deadline."""
        self._watch = None
        if self.transport.is_closing():
            return
        fault = self._clock.fault(
            self.loop.time(),
            head_bytes=self._head_bytes,
            reading_head=self._reading_head,
            paused=self.flow.read_paused,
            idle_s=self.timeout_keep_alive,
        )
        if fault is None:
            self._watch = self.loop.call_later(TICK_S, self._check_read)
            return
        cycle = self.cycle
        if self._reading_head:  # answer unless an earlier pipelined request is still answered
            answer = fault != "" and (cycle is None or cycle.response_complete)
        else:  # answer unless this request's answer has begun
            answer = cycle is not None and not (
                cycle.response_complete or getattr(cycle, "response_started", False)
            )
        if answer:
            log.info("timed out a slow client: %s", fault)
            self.transport.write(timed_out(fault))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._clock.arrived += len(data)
        if not self._reading_head:
            self._feed(data)
            return
        if self._head_bytes == 0:
            self._clock.head_since = self.loop.time()
        # A chunk can hold the end of the head and then a body (or the next pipelined
        # request): the bytes count against the head only while the head is still unfinished
        # after the parser has read them. The parser holds at most this one chunk meanwhile.
        self._head_bytes += len(data)
        self._feed(data)
        if self._reading_head and self._head_bytes > self.MAX_HEAD_BYTES:
            self._refuse_head()

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, but an upgrade it will not make (``h2c``, or a
        WebSocket without a WebSocket library) is ignored as RFC 9110 allows: the request is
        read on as HTTP/1.1, its body and whatever follows included (uvicorn dropped them: a
        ``curl --http2`` or Java ``RestClient`` POST reached the app with an empty body)."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            self._resume_after_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # llhttp ends an upgrade request at its head and pauses; when the upgrade is ignored
        # its body (if it has one) is still to come, read by _resume_after_upgrade.
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._deferred_body = _body_framing(self.headers)
            if self._deferred_body is not None:
                return  # still reading this request: its body bytes are not head bytes
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0  # what follows is the next request's

    def _resume_after_upgrade(self, rest: bytes) -> None:
        """A new parser for the rest of the connection; it first reads the deferred body
        (framed by a head that stands for the original one), then requests as usual."""
        framing, self._deferred_body = self._deferred_body, None
        self.parser = httptools.HttpRequestParser(_AfterIgnoredUpgrade(self, framing is not None))
        if framing is not None:
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        if rest:
            self._feed(rest)

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this only from the ``except httptools.HttpParserError`` of its
        # data_received: the exception being handled is the parser's.
        error = sys.exc_info()[1]
        if isinstance(error, httptools.HttpParserCallbackError):
            # A callback raised: uvicorn's own URL check (a path over 64 KiB that came in
            # one read) names the fault; anything else is ours, logged with its traceback.
            cause = error.__context__
            if isinstance(cause, httptools.HttpParserError):
                error = cause
            else:
                log.error("parsing a request head failed", exc_info=cause)
        self.transport.write(_malformed_head(str(error) if error is not None else msg))
        self.transport.close()

    def _refuse_head(self) -> None:
        self._reading_head = False  # nothing more is read from this connection
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_too_large_head(self.MAX_HEAD_BYTES))
        # else an earlier pipelined request is still being answered: close without an answer
        self.transport.close()
