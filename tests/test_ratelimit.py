"""Token buckets per client: bursts, refill, the wait they announce, and bounded memory."""

from __future__ import annotations

import pytest

from matcher.ratelimit import RateLimit, RateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_wait_is_announced() -> None:
    bucket = TokenBucket(RateLimit(per_second=2.0, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token at 2 per second
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(RateLimit(per_second=1.0, burst=2), now=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    # An hour idle refills only up to the burst.
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(RateLimit(per_second=1.0, burst=1), now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0.0


def test_clients_have_their_own_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limit = RateLimit(per_second=0.1, burst=1)
    assert limiter.take("cert:A", limit) == 0.0
    assert limiter.take("cert:A", limit) == pytest.approx(10.0)
    assert limiter.take("cert:B", limit) == 0.0
    clock.now += 10.0
    assert limiter.take("cert:A", limit) == 0.0


def test_a_changed_limit_takes_effect() -> None:
    limiter = RateLimiter(FakeClock())
    assert limiter.take("k", RateLimit(0.1, 1)) == 0.0
    assert limiter.take("k", RateLimit(0.1, 1)) > 0.0
    assert limiter.take("k", RateLimit(0.1, 5)) == 0.0


def test_many_peers_do_not_grow_the_table_without_bound() -> None:
    limiter = RateLimiter(FakeClock(), max_clients=100)
    for i in range(1000):
        limiter.take(f"peer:10.0.{i // 256}.{i % 256}", RateLimit(1.0, 1))
    assert len(limiter) == 100


@pytest.mark.parametrize("per_second, burst", [(0, 1), (-1, 1), (float("nan"), 1),
                                               (1, 0.5), (float("inf"), 1)])
def test_nonsense_limits_are_refused(per_second, burst) -> None:
    with pytest.raises(ValueError):
        RateLimit(per_second, burst)
