"""The fast lane's admission: the same decisions and RateLimit values as the general one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ron.kernel.config import GatewayConfig, QuotaConfig
from ron.kernel.metrics import Metrics
from ron.quota.shared import Verdict
from ron.services.gateway.admission import Admission
from ron.services.gateway.limits import (
    Tenant,
    ratelimit_headers,
    ratelimit_lines,
)


async def _ready() -> tuple[bool, dict[str, Any]]:
    return True, {}


def _admission(tmp_path: Path, **quota: Any) -> Admission:
    config = GatewayConfig(workers=2, quota=QuotaConfig(**quota))
    return Admission(config, Metrics(), tmp_path, 0, _ready)


def test_a_tenants_ratelimit_value_is_the_verdicts() -> None:
    tenant = Tenant("t", rps=7.0, burst=20.0, bytes_per_s=1.0, bytes_burst=1.0)
    for left in [0.0, 0.3, 1.0, 6.99, 7.0, 12.5, 18.0, 19.0]:
        verdict = Verdict(True, left, 0.0, (tenant.burst - left) / tenant.rps)
        # The fast lane's raw head lines are the two headers, rendered.
        rendered = b"".join(n + b": " + v + b"\r\n" for n, v in ratelimit_headers(tenant, verdict))
        assert tenant.ratelimit_lines(left) == rendered == ratelimit_lines(tenant, verdict)


def _value(lines: bytes) -> bytes:
    """The RateLimit value in a fast-lane answer's head lines."""
    policy, limit, end = lines.split(b"\r\n")
    assert policy.startswith(b"ratelimit-policy: ") and end == b""
    return limit.removeprefix(b"ratelimit: ")


def test_a_slow_tenant_is_refused_exactly_at_its_burst(tmp_path: Path) -> None:
    admission = _admission(tmp_path, rps=50.0, burst=3.0)
    answers = [admission.admit_read_now("10.0.0.1", 1024, 100.0) for _ in range(4)]
    assert [a is not None for a in answers] == [True, True, True, False]
    assert [_value(a[1]) for a in answers if a is not None] == [
        b'"requests";r=2;t=1',
        b'"requests";r=1;t=1',
        b'"requests";r=0;t=1',
    ]
    assert admission.admit_read_now("10.0.0.2", 1024, 100.0) is not None  # another tenant
    assert admission.admit_read_now("10.0.0.1", 0, 100.1) is not None  # HEAD: one token


def test_a_fast_tenant_is_admitted_on_local_views_with_exact_values(tmp_path: Path) -> None:
    admission = _admission(tmp_path, rps=10_000.0, burst=1000.0)
    buckets = admission.quotas.buckets
    values = []
    for i in range(50):
        answer = admission.admit_read_now("10.0.0.1", 1024, 5.0 + i * 1e-5)
        assert answer is not None
        values.append(_value(answer[1]))
    assert buckets.settles <= 2  # the first take of each bucket, then local
    # Each request spends one token; 0.1 refills between them: r goes down by one.
    assert values[:3] == [b'"requests";r=999;t=1', b'"requests";r=998;t=1', b'"requests";r=997;t=1']


def test_quotas_off_admit_with_no_ratelimit_value(tmp_path: Path) -> None:
    admission = _admission(tmp_path, enabled=False, rps=1.0, burst=1.0)
    for _ in range(5):
        answer = admission.admit_read_now("10.0.0.1", 1024, 0.0)
        assert answer is not None and answer[1] == b""
    assert answer[0].id == "anon:10.0.0.1"
