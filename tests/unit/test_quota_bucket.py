"""Token buckets and the bounded (tenant, app) table, driven by an explicit clock."""

from __future__ import annotations

import math

import pytest

from ron.quota.bucket import BucketTable, TokenBucket


def test_bucket_starts_full_and_admits_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=0.0)
    assert all(bucket.try_take(0.0) for _ in range(100))
    assert not bucket.try_take(0.0)


def test_refused_take_changes_nothing_and_retry_after_is_exact() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert bucket.try_take(0.0) and bucket.try_take(0.0)
    assert not bucket.try_take(0.0)
    assert bucket.retry_after() == pytest.approx(0.1)
    assert not bucket.try_take(0.09)
    assert bucket.try_take(0.1)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    for _ in range(5):
        bucket.try_take(0.0)
    bucket.refill(1000.0)
    assert bucket.tokens == 5


def test_clock_going_backwards_mints_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=100.0)
    assert bucket.try_take(100.0)
    assert not bucket.try_take(50.0)
    assert not bucket.try_take(100.05)  # stamp was not rewound to 50
    assert bucket.try_take(100.2)


def test_cost_above_burst_can_never_pass() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert not bucket.try_take(0.0, cost=3)
    assert math.isinf(bucket.retry_after(3))


def test_reconfigure_keeps_spent_tokens_and_clamps_to_new_burst() -> None:
    bucket = TokenBucket(rate=1, burst=10, now=0.0)
    for _ in range(8):
        bucket.try_take(0.0)
    bucket.reconfigure(rate=100, burst=4, now=1.0)  # 2 + 1 earned at the old rate
    assert bucket.tokens == pytest.approx(3)
    bucket.reconfigure(rate=100, burst=1, now=1.0)
    assert bucket.tokens == 1


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_invalid_limits_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst, now=0.0)


def test_table_keys_are_independent() -> None:
    table: BucketTable[tuple[int, int]] = BucketTable()
    assert table.take((1, 0x0301), rate=1, burst=1, now=0.0) is None
    wait = table.take((1, 0x0301), rate=1, burst=1, now=0.0)
    assert wait == pytest.approx(1.0)
    assert table.take((1, 0x0201), rate=1, burst=1, now=0.0) is None  # other app
    assert table.take((2, 0x0301), rate=1, burst=1, now=0.0) is None  # other tenant


def test_table_evicts_the_least_recently_used() -> None:
    table: BucketTable[int] = BucketTable(capacity=2)
    table.take(1, rate=1, burst=1, now=0.0)
    table.take(2, rate=1, burst=1, now=0.0)
    table.take(1, rate=1, burst=1, now=0.0)  # 1 is now the most recent
    table.take(3, rate=1, burst=1, now=0.0)
    assert len(table) == 2 and 1 in table and 3 in table and 2 not in table


def test_table_applies_new_limits_on_the_next_take() -> None:
    table: BucketTable[str] = BucketTable()
    assert table.take("t", rate=1, burst=1, now=0.0) is None
    assert table.take("t", rate=1, burst=1, now=0.0) is not None
    # A reload raises the rate: the next take refills at the new rate from now on.
    assert table.take("t", rate=1000, burst=2000, now=0.0) is not None
    assert table.take("t", rate=1000, burst=2000, now=0.01) is None


def test_table_resize_forgets_oldest() -> None:
    table: BucketTable[int] = BucketTable(capacity=10)
    for key in range(10):
        table.take(key, rate=1, burst=1, now=0.0)
    table.resize(3)
    assert len(table) == 3 and all(k in table for k in (7, 8, 9))
    with pytest.raises(ValueError):
        table.resize(0)
