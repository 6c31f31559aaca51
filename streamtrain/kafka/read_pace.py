"""A bulk read that yields to the broker's other clients while the broker answers late.

A new replica reads a whole base (gigabytes) as fast as the broker answers, from the broker
the running servers tail for deltas (issue 26). :class:`ReadPace` is a scavenger's rule,
after LEDBAT (RFC 6817): the reader times each wait for the broker (a poll that found nothing
fetched ahead and blocked until records came), keeps the lowest such wait as the broker's
idle latency, and while its waits run more than ``target_s`` above that, pauses before its
next poll for about the excess (at most ``max_pause_s``): the broker gets back, idle, about
the time it answered late. While the broker keeps up, the waits stay near the lowest and the
read is never paused; a reader slower than the broker finds its records already fetched and
is never paused either. Opt-in (``snapshot/readers.BASE_READ_PACE``): measured on the
embedded broker it did not shorten the servers' waits (docs/snapshots.md, A new replica's read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A poll that returned within this found records already fetched ahead: not a wait.
_MIN_WAIT_S = 0.001


@dataclass
class ReadPace:
    """Call :meth:`observe` after each poll that returned records; sleep what it returns.

    ``target_s``: the latency above the lowest seen that the reader tolerates unpaused.
    ``smoothing``: weight of the newest wait in the running excess (one slow fetch alone,
    say a scheduling hiccup, pauses little). ``max_pause_s``: the longest one pause.
    """

    target_s: float = 0.05
    max_pause_s: float = 0.5
    smoothing: float = 0.25
    lowest_s: float | None = field(default=None, init=False)
    excess_s: float = field(default=0.0, init=False)
    paused_s: float = field(default=0.0, init=False)  # in all, for reports
    pauses: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.target_s < 0 or self.max_pause_s < 0 or not 0 < self.smoothing <= 1:
            raise ValueError(
                f"ReadPace needs target_s >= 0, max_pause_s >= 0, 0 < smoothing <= 1; got "
                f"{self.target_s}, {self.max_pause_s}, {self.smoothing}"
            )

    def observe(self, waited_s: float) -> float:
        """``waited_s``: how long the poll blocked before records came. Returns the pause
        (s) to take before the next poll."""
        if waited_s < _MIN_WAIT_S:
            return 0.0  # read ahead of us: the broker kept up
        if self.lowest_s is None or waited_s < self.lowest_s:
            self.lowest_s = waited_s
        excess = waited_s - self.lowest_s
        self.excess_s += self.smoothing * (excess - self.excess_s)
        if self.excess_s <= self.target_s:
            return 0.0
        pause = min(self.max_pause_s, self.excess_s)
        self.paused_s += pause
        self.pauses += 1
        return pause
