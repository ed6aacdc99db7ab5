"""Shared token buckets: exact arithmetic, and one bucket across OS processes."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

from ron.quota.shared import SharedBuckets, SharedCounters, Verdict


def test_burst_then_refusal_with_retry_after(tmp_path: Path) -> None:
    b = SharedBuckets(tmp_path / "q")
    verdicts = [b.take("t", 1, rate=2.0, burst=3.0, now=100.0) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[2].remaining == 0
    assert verdicts[3].retry_after == 0.5  # one token at 2/s
    assert b.take("t", 1, rate=2.0, burst=3.0, now=100.5).allowed


def test_large_cost_goes_into_debt_then_waits_it_off(tmp_path: Path) -> None:
    b = SharedBuckets(tmp_path / "q")
    assert b.take("t", 1000, rate=100.0, burst=100.0, now=0.0).allowed  # debt of 900
    refused = b.take("t", 1, rate=100.0, burst=100.0, now=1.0)
    assert not refused.allowed
    assert refused.retry_after == 8.01 or abs(refused.retry_after - 8.01) < 1e-6
    assert b.take("t", 1, rate=100.0, burst=100.0, now=10.0).allowed


def test_tenants_do_not_share_buckets(tmp_path: Path) -> None:
    b = SharedBuckets(tmp_path / "q")
    assert b.take("a", 1, rate=1.0, burst=1.0, now=0.0).allowed
    assert not b.take("a", 1, rate=1.0, burst=1.0, now=0.0).allowed
    assert b.take("b", 1, rate=1.0, burst=1.0, now=0.0).allowed


def test_full_table_reuses_the_longest_idle_slot(tmp_path: Path) -> None:
    b = SharedBuckets(tmp_path / "q", slots=4)
    for i in range(10):  # more tenants than slots: must not fail
        assert b.take(f"t{i}", 1, rate=1.0, burst=1.0, now=float(i)).allowed


def _hammer(path: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    b = SharedBuckets(Path(path))
    allowed = sum(b.take("shared", 1, rate=1e-9, burst=100.0, now=0.0).allowed for _ in range(n))
    out.put(allowed)


def test_two_processes_share_one_bucket(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "q"), 80, out)) for _ in range(2)]
    for p in procs:
        p.start()
    totals = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sum(totals) == 100  # 160 attempts, one burst of 100 between them


def test_counters_sum_over_workers_and_reset_on_restart(tmp_path: Path) -> None:
    a = SharedCounters(tmp_path / "c", 0)
    b = SharedCounters(tmp_path / "c", 1)
    a.add(3)
    b.add(2)
    assert a.total() == b.total() == 5
    SharedCounters(tmp_path / "c", 1)  # worker 1 restarted: its phantom count is gone
    assert a.total() == 3


def test_a_fast_tenant_settles_in_batches_and_every_token_is_charged(tmp_path: Path) -> None:
    """At 10,000/s a worker settles with the table about once per lease (100 tokens),
    and once it settles everything it admitted is in the shared bucket."""
    worker = SharedBuckets(tmp_path / "q", shared=True)
    rate = burst = 10_000.0
    verdicts = [worker.take("t", 1, rate, burst, now=i * 1e-6) for i in range(1000)]
    assert all(v.allowed for v in verdicts)
    assert worker.settles <= 1000 // 100 + 2
    worker.settle_all(now=1e-3)
    probe = SharedBuckets(tmp_path / "q", shared=True)
    left = probe.take("t", 0, rate, burst, now=1e-3).remaining
    assert burst - 1000 <= left <= burst - 1000 + 1e-3 * rate  # plus what refilled


def test_a_slow_tenant_is_judged_by_the_table_on_every_request(tmp_path: Path) -> None:
    worker = SharedBuckets(tmp_path / "q", shared=True)
    for i in range(20):
        worker.take("t", 1, rate=50.0, burst=100.0, now=i * 1e-4)  # lease 0.5: none local
    assert worker.settles == 20


def test_two_workers_overshoot_an_empty_bucket_by_at_most_a_lease(tmp_path: Path) -> None:
    a = SharedBuckets(tmp_path / "q", shared=True)
    b = SharedBuckets(tmp_path / "q", shared=True)
    rate, burst = 10_000.0, 1000.0  # lease: 100 tokens per 10 ms
    admitted = 0
    now = 0.0
    for i in range(3000):  # 3000 requests in 3 ms: far past the burst
        now = i * 1e-6
        admitted += (a if i % 2 else b).take("t", 1, rate, burst, now).allowed
    assert burst <= admitted <= burst + now * rate + 100
    a.settle_all(now)
    b.settle_all(now)
    # Whatever was admitted is owed: the bucket is empty or in debt, not refilled.
    assert not SharedBuckets(tmp_path / "q", shared=True).take("t", 1, rate, burst, now).allowed


def _read(b: SharedBuckets, nbytes: float, now: float, fast: bool) -> Verdict | None:
    """A small GET's charge: take_read first when ``fast``, take_pair otherwise (and
    when take_read declines); the request bucket's verdict, None when refused."""
    request, volume = ("r", 2000.0, 50.0), ("b", 300_000.0, 60_000.0)
    if fast:
        left = b.take_read(request, volume, nbytes, now)
        if left is not None:
            return Verdict(True, left, 0.0, (request[2] - left) / request[1])
    verdict, spent = b.take_pair(
        (request[0], 1.0, *request[1:]), (volume[0], nbytes, *volume[1:]), now
    )
    return verdict if verdict.allowed and spent is not None and spent.allowed else None


def test_take_read_decides_exactly_as_take_pair(tmp_path: Path) -> None:
    """Same requests, same clock: the fast form admits, refuses and reports what the
    general one does, and leaves the same tokens in the table."""
    rng = random.Random(4)
    fast = SharedBuckets(tmp_path / "fast", shared=True)
    plain = SharedBuckets(tmp_path / "plain", shared=True)
    now, outcomes = 0.0, []
    for _ in range(5000):  # bursts past both buckets' limits, then idle gaps
        now += rng.choice([0.0, 1e-5, 1e-4, 3e-3, 0.02])
        nbytes = float(rng.choice([1, 100, 1024, 20_000]))
        a, b = _read(fast, nbytes, now, True), _read(plain, nbytes, now, False)
        assert a == b
        outcomes.append(a is not None)
    assert 0 < sum(outcomes) < len(outcomes)  # both admissions and refusals were seen
    assert fast.settles == plain.settles < 2 * len(outcomes)  # some were local
    for b in (fast, plain):
        b.settle_all(now)
    for key in ("r", "b"):
        left = [
            SharedBuckets(tmp_path / n).take(key, 0, 1.0, 1e9, now).remaining
            for n in ("fast", "plain")
        ]
        assert left[0] == left[1]


def test_take_read_charges_nothing_when_it_declines(tmp_path: Path) -> None:
    b = SharedBuckets(tmp_path / "q", shared=True)
    request, volume = ("r", 10_000.0, 10_000.0), ("b", 1e6, 1e6)
    assert b.take_read(request, volume, 100, 0.0) is None  # no views yet: settle first
    b.take_pair(("r", 1.0, 10_000.0, 10_000.0), ("b", 100.0, 1e6, 1e6), 0.0)
    assert b.take_read(request, volume, 100, 1e-4) is not None
    assert b.take_read(request, volume, 1e7, 2e-4) is None  # past the byte lease
    assert b.take_read(request, volume, 100, 0.5) is None  # the views are stale
    b.settle_all(0.5)
    probe = SharedBuckets(tmp_path / "q", shared=True)
    assert probe.take("b", 0, 1e6, 1e6, 0.0).remaining == 1e6 - 200  # two charges only
