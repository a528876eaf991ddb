"""The CPS token bucket on a fake clock: rate over time, burst, waits, bad input."""

from __future__ import annotations

import itertools

import pytest

from sipbridge.dialer.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_holds_over_a_long_run() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    started = []
    for _ in range(1000):  # a dialer loop: acquire, else sleep what it says
        while not bucket.try_acquire():
            clock.now += bucket.wait_time()
        started.append(clock.now)
    # 1000 calls at 2/s: the first is immediate, then one every 0.5 s.
    assert started[-1] - started[0] == pytest.approx(999 * 0.5)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) == pytest.approx(0.5)
    # No window of 1 s ever holds more than rate * 1 s + burst calls.
    for i, t in enumerate(started):
        assert sum(1 for u in started[i:] if u < t + 1.0) <= 3


def test_burst_after_idle_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time() == pytest.approx(1.0)
    clock.now += 0.5
    assert not bucket.try_acquire()
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_acquire()
    clock.now += 3600  # idle for an hour: still only `burst` at once
    assert bucket.tokens == pytest.approx(3.0)


@pytest.mark.parametrize(("rate", "burst", "error"), [(0, 1, "rate"), (-1, 1, "rate"), (1, 0.5, "burst")])
def test_bad_settings(rate: float, burst: float, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TokenBucket(rate=rate, burst=burst, clock=FakeClock())


def test_bad_requests_and_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    with pytest.raises(ValueError, match="n must be"):
        bucket.try_acquire(3)
    with pytest.raises(ValueError, match="n must be"):
        bucket.wait_time(0)
    clock.now -= 1
    with pytest.raises(RuntimeError, match="backwards"):
        bucket.try_acquire()
