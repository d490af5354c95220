"""The token buckets behind the write rate limits (SPEC §3 "Limits"): exact counts, bounded memory."""

from __future__ import annotations

import pytest

from escalation.domain.token_bucket import Rate, TokenBuckets


@pytest.mark.parametrize(("per_second", "burst"), [(1.0, 1), (2.0, 5), (0.5, 20)])
def test_a_burst_passes_then_the_next_call_waits_for_one_token(per_second: float, burst: int) -> None:
    buckets = TokenBuckets(Rate(per_second=per_second, burst=burst))
    assert [buckets.take("a", 100.0) for _ in range(burst)] == [0.0] * burst
    assert buckets.take("a", 100.0) == pytest.approx(1 / per_second)
    assert buckets.wait("a", 100.0) == pytest.approx(1 / per_second)
    # Half a token later, half the wait is left; a full token later, one call passes and only one.
    assert buckets.take("a", 100.0 + 0.5 / per_second) == pytest.approx(0.5 / per_second)
    assert buckets.take("a", 100.0 + 1 / per_second) == 0.0
    assert buckets.take("a", 100.0 + 1 / per_second) > 0


def test_a_refused_call_takes_nothing_and_other_keys_are_unaffected() -> None:
    buckets = TokenBuckets(Rate(per_second=1.0, burst=2))
    buckets.take("a", 0.0)
    buckets.take("a", 0.0)
    for _ in range(5):
        assert buckets.take("a", 0.0) == pytest.approx(1.0), "refusals do not push the next token further away"
    assert buckets.take("b", 0.0) == 0.0
    assert buckets.wait("never-seen", 0.0) == 0.0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    buckets = TokenBuckets(Rate(per_second=10.0, burst=3))
    buckets.take("a", 0.0)
    later = 1_000_000.0
    assert [buckets.take("a", later) for _ in range(4)][-1] > 0


@pytest.mark.parametrize("keys", [10, 1_000, 20_000])
def test_idle_buckets_are_forgotten_once_full_again(keys: int) -> None:
    rate = Rate(per_second=2.0, burst=4)
    buckets = TokenBuckets(rate)
    for n in range(keys):
        buckets.take(n, 0.0)
    assert len(buckets) == keys
    buckets.take("next", rate.refill_seconds)
    assert len(buckets) == 1


@pytest.mark.parametrize("max_keys", [1, 7, 100])
def test_memory_is_bounded_by_max_keys_even_when_every_key_is_busy(max_keys: int) -> None:
    buckets = TokenBuckets(Rate(per_second=0.001, burst=1), max_keys=max_keys)
    for n in range(10 * max_keys):
        buckets.take(n, 0.0)
        assert len(buckets) <= max_keys
    # The most recent key is still limited.
    assert buckets.take(10 * max_keys - 1, 0.0) > 0


@pytest.mark.parametrize(("per_second", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (float("nan"), 1)])
def test_a_rate_needs_a_positive_speed_and_a_burst(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="per_second > 0"):
        Rate(per_second=per_second, burst=burst)
