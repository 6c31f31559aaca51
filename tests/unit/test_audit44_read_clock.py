"""The read deadlines' rules (serve/read_watch.py), on a clock the test moves."""

from __future__ import annotations

from streamtrain.serve.read_watch import ReadClock


def _fault(
    clock: ReadClock, now: float, *, head: int = 0, reading_head: bool = True, paused: bool = False
) -> str | None:
    return clock.fault(now, head_bytes=head, reading_head=reading_head, paused=paused, idle_s=5)


def test_a_silent_new_connection_closes_silently_after_the_keep_alive_timeout() -> None:
    clock = ReadClock(0.0)
    assert _fault(clock, 4.9) is None
    assert _fault(clock, 5.0) == ""


def test_a_kept_alive_connection_between_requests_is_left_to_uvicorn() -> None:
    clock = ReadClock(0.0)
    clock.arrived = 500  # it has sent a request before
    assert _fault(clock, 1000.0) is None


def test_a_head_must_be_whole_within_its_deadline() -> None:
    clock = ReadClock(0.0)
    clock.arrived, clock.head_since = 20, 1.0
    assert _fault(clock, 10.9, head=20) is None
    fault = _fault(clock, 11.0, head=20)
    assert fault is not None and "not received whole within 10 s (20 bytes arrived)" in fault


def test_a_body_must_keep_arriving_but_the_servers_own_pause_does_not_count() -> None:
    clock = ReadClock(0.0)
    assert _fault(clock, 1.0, reading_head=False) is None  # the window starts
    clock.arrived += ReadClock.BODY_MIN_BYTES  # enough in the first window
    assert _fault(clock, 11.0, reading_head=False) is None
    assert _fault(clock, 15.0, reading_head=False, paused=True) is None  # window restarts
    assert _fault(clock, 24.9, reading_head=False) is None
    clock.arrived += ReadClock.BODY_MIN_BYTES - 1
    fault = _fault(clock, 25.0, reading_head=False)
    assert fault is not None and "arriving too slowly" in fault
    assert f"{ReadClock.BODY_MIN_BYTES - 1} bytes in the last 10 s" in fault
