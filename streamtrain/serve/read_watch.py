"""Deadlines on reading a request, for the serving worker's HTTP protocol (serve/transport.py).

uvicorn times a connection out only between requests (its keep-alive timeout, armed after an
answer). A client that connected and sent nothing, sent a head a few bytes at a time
(slowloris), or announced a body and sent part of it held its connection, and on the app's
path a task awaiting ``receive()``, until it left: 200 such clients held 200 connections for
ever. :class:`ReadClock` holds the rules, checked about once a second per connection:

1. a new connection that has sent nothing is closed, silently, after uvicorn's keep-alive
   timeout (as a kept-alive connection that sends no next request is);
2. a request's line and headers must be whole within ``HEAD_TIMEOUT_S`` of its first byte
   (a head is at most 64 KiB: any client sends that in far less);
3. a body must keep arriving: at least ``BODY_MIN_BYTES`` in every ``BODY_WINDOW_S``, counted
   only while the server reads (flow control and a request waiting behind an unanswered one
   pause reading: that wait is the server's, not the client's).

A broken rule 2 or 3 is answered 408 in the JSON error body and the connection is closed.
Memory stays bounded by what arrived as before: the head by its 64 KiB bound, a body by
``serve.max_body_bytes`` (checked as it arrives).
"""

from __future__ import annotations

import json

# How often a connection's reading is checked: the deadlines below hold to within this.
TICK_S = 1.0


class ReadClock:
    """What a connection has sent and since when; :meth:`fault` says which rule it breaks."""

    HEAD_TIMEOUT_S = 10.0
    BODY_WINDOW_S = 10.0
    BODY_MIN_BYTES = 10 * 1024  # 1 KiB/s: a modem is faster; a slowloris body is not

    __slots__ = ("arrived", "connected", "head_since", "window_mark", "window_since")

    def __init__(self, now: float) -> None:
        self.connected = now
        self.arrived = 0  # bytes received on the connection
        self.head_since: float | None = None  # first byte of the head being read
        self.window_since: float | None = None  # start of the body's current window
        self.window_mark = 0  # ``arrived`` at that start

    def fault(
        self, now: float, *, head_bytes: int, reading_head: bool, paused: bool, idle_s: float
    ) -> str | None:
        """The rule the connection breaks now ("" for a silent close), None if none."""
        if reading_head:
            self.window_since = None
            if head_bytes == 0:  # between requests: uvicorn's keep-alive timer, or rule 1
                return "" if self.arrived == 0 and now - self.connected >= idle_s else None
            since = self.head_since if self.head_since is not None else now
            if now - since >= self.HEAD_TIMEOUT_S:
                return (
                    f"request line and headers not received whole within "
                    f"{self.HEAD_TIMEOUT_S:g} s ({head_bytes} bytes arrived)"
                )
            return None
        if paused or self.window_since is None:  # the server's wait, or a new window
            self.window_since, self.window_mark = now, self.arrived
            return None
        if now - self.window_since < self.BODY_WINDOW_S:
            return None
        sent = self.arrived - self.window_mark
        if sent < self.BODY_MIN_BYTES:
            return (
                f"request body arriving too slowly: {sent} bytes in the last "
                f"{now - self.window_since:.0f} s, under {self.BODY_MIN_BYTES} bytes per "
                f"{self.BODY_WINDOW_S:g} s"
            )
        self.window_since, self.window_mark = now, self.arrived
        return None


def timed_out(reason: str) -> bytes:
    """The 408 answer (status line, headers, JSON error body) for a broken read deadline."""
    body = json.dumps({"error": f"{reason}; the connection is closed"}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
