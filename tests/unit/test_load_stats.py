"""The arithmetic behind the chaos and soak reports: percentiles, leak trends, and the
self-verifying message payloads the load sends."""

from __future__ import annotations

import math
import random

import pytest

from support.load import message_payload, parse_payload
from support.soak import ProcSample, trends
from support.stats import linear_fit, percentile, trend

MiB = 1024 * 1024


def test_percentile_interpolates_between_ranks() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order of the input does not matter
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_linear_fit_recovers_an_exact_line() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    fit = linear_fit(times, [3 + 2 * t for t in times])
    assert fit.slope == pytest.approx(2)
    assert fit.intercept == pytest.approx(3)
    assert fit.slope_stderr == pytest.approx(0)
    with pytest.raises(ValueError):
        linear_fit([1.0, 1.0], [1.0, 2.0])


def test_linear_fit_standard_error_matches_the_textbook_formula() -> None:
    times = [0.0, 1.0, 2.0, 3.0]
    values = [1.0, 3.0, 2.0, 5.0]
    fit = linear_fit(times, values)
    # Means 1.5 and 2.75; Sxx = 5, Sxy = 5.5: slope 1.1, intercept 2.75 - 1.1 * 1.5.
    assert fit.slope == pytest.approx(1.1)
    assert fit.intercept == pytest.approx(1.1)
    residuals = [y - (1.1 + 1.1 * t) for t, y in zip(times, values, strict=True)]
    # SE(slope) = sqrt(SSE / (n - 2) / Sxx)
    expected = math.sqrt(sum(r * r for r in residuals) / 2 / 5)
    assert fit.slope_stderr == pytest.approx(expected)


def _series(slope: float, noise: float, n: int = 60, level: float = 50 * MiB) -> list[float]:
    rng = random.Random(7)
    return [level + slope * t + rng.gauss(0, noise) for t in range(n)]


def test_noise_alone_is_not_flagged() -> None:
    times = [float(t) for t in range(60)]
    t = trend(times, _series(0, 512 * 1024), min_growth=4 * MiB, min_relative=0.05)
    assert not t.flagged


def test_steady_growth_beyond_the_floors_is_flagged() -> None:
    times = [float(t) for t in range(60)]
    # 200 KiB/s for a minute: ~12 MiB, over both the 4 MiB and the 5 % (2.5 MiB) floors.
    t = trend(times, _series(200 * 1024, 256 * 1024), min_growth=4 * MiB, min_relative=0.05)
    assert t.significant and t.flagged
    assert t.growth == pytest.approx(200 * 1024 * 59, rel=0.1)
    assert t.per_hour == pytest.approx(200 * 1024 * 3600, rel=0.1)


def test_clear_but_small_growth_is_not_flagged() -> None:
    times = [float(t) for t in range(60)]
    # 16 KiB/s with almost no noise: unmistakable, but under 1 MiB in all.
    t = trend(times, _series(16 * 1024, 1024), min_growth=4 * MiB, min_relative=0.05)
    assert t.significant and not t.flagged


def test_shrinking_or_too_few_samples_is_not_flagged() -> None:
    times = [float(t) for t in range(60)]
    assert not trend(times, _series(-200 * 1024, 1024), min_growth=0).significant
    two = trend([0.0, 1.0], [0.0, 100 * MiB], min_growth=0)
    assert not two.significant and two.to_json()["slope_stderr"] is None
    one = trend([0.0], [5.0], min_growth=0)
    assert not one.flagged and one.last == 5.0


def test_trends_judge_a_restarted_process_on_its_last_incarnation() -> None:
    rounds = []
    for t in range(40):
        # "svc" grows fast in its first life, is restarted at t=20 and stays flat after.
        svc = ProcSample(1, (10 + t) * MiB, 10) if t < 20 else ProcSample(2, 20 * MiB, 10)
        rounds.append((float(t), {"kernel": ProcSample(100, 40 * MiB, 20), "svc": svc}))
    judged = trends(rounds, warmup_s=5.0)
    assert judged["svc"]["rss"].samples == 20
    assert not judged["svc"]["rss"].flagged
    assert judged["node_total"]["rss"].samples == 20
    assert judged["node_total"]["fds"].first == 30


def test_trends_flag_a_descriptor_leak() -> None:
    rounds = [(float(t), {"gw": ProcSample(5, 30 * MiB, 20 + t // 2)}) for t in range(60)]
    judged = trends(rounds, warmup_s=10.0)
    assert judged["gw"]["fds"].flagged
    assert not judged["gw"]["rss"].flagged


def test_message_payloads_verify_themselves() -> None:
    payload = message_payload("s0-17", b"\x00body\xff|with a bar")
    assert parse_payload(payload) == ("s0-17", True)
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    assert parse_payload(tampered) == ("s0-17", False)
    assert parse_payload(b"no separators") == ("", False)
