from __future__ import annotations

import pytest

from streamtrain.train.cadence import EveryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fires_on_steps_then_resets() -> None:
    clock = FakeClock()
    policy = EveryPolicy(every_steps=5, every_seconds=60.0, clock=clock)
    assert [policy.expired(s) for s in (1, 4)] == [False, False]
    assert policy.expired(5)
    policy.mark(5)
    assert not policy.expired(9)
    assert policy.expired(10)


def test_fires_on_time_but_never_without_a_new_step() -> None:
    clock = FakeClock()
    policy = EveryPolicy(every_steps=1000, every_seconds=2.0, clock=clock)
    clock.now += 1.9
    assert not policy.expired(1)
    clock.now += 0.2
    assert policy.expired(1)
    policy.mark(1)
    clock.now += 10.0
    assert not policy.expired(1), "no new step since the last fire: nothing new to publish"
    assert policy.expired(2)


def test_rejects_nonsense_schedule() -> None:
    with pytest.raises(ValueError, match="every_steps"):
        EveryPolicy(every_steps=0, every_seconds=1.0)
