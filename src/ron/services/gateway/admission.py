"""Admission: may this request start now? Capacity, degradation, tenant and quota.

Order matters and is cheap-first: the global inflight cap (503) protects the node
before any per-tenant work; while degraded (inflight at 90% of the cap, or a required
service down) reads stay open and writes are refused (fail-open reads, fail-closed
writes); then the tenant is resolved (401 for an unknown key) and charged one request
(429 when its bucket is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ron.kernel.config import GatewayConfig
from ron.kernel.metrics import Metrics
from ron.proto.envelope import ErrorCode, RonError
from ron.quota.shared import SharedBuckets, SharedCounters, Verdict
from ron.services.gateway.limits import (
    QuotaExhausted,
    Quotas,
    Tenant,
    TenantResolver,
    ratelimit_lines,
)

log = logging.getLogger("ron.gateway")

NODE_READY_TTL = 0.5


@dataclass
class Admitted:
    """What the handler and the response need from admission."""

    tenant: Tenant | None
    verdict: Verdict | None


class Overloaded(RonError):
    """503 with a randomised Retry-After of 1-5 s, so refused clients do not return
    in lockstep."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, retry_after=random.randint(1, 5))


class Admission:
    """One per gateway worker; reads the node-wide counters every worker shares."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: Metrics,
        run_dir: Path,
        worker_slot: int,
        node_ready: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
    ) -> None:
        self._buckets = SharedBuckets(
            run_dir / "gateway-quota.buckets", shared=config.worker_count > 1
        )
        self._counters = SharedCounters(run_dir / "gateway-inflight.counters", worker_slot)
        self._node_ready = node_ready
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._refreshing: asyncio.Task[None] | None = None
        # This worker's in-flight count, read when metrics are scraped rather than
        # updated twice per request.
        metrics.inflight.set_function(lambda: self._counters.value)
        self.quota_exhaustions = metrics.quota_exhaustions_total
        self.rejected = metrics.rejected_total
        self.reconfigure(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        self.config = config
        self.tenants = TenantResolver(config)
        self.quotas = Quotas(self._buckets, config.quota)

    def close(self) -> None:
        self._buckets.close()
        self._counters.close()

    # --- capacity -----------------------------------------------------------------------

    def inflight(self) -> int:
        return self._counters.total()

    def degraded_reason(self, others: int | None = None) -> str | None:
        """Why writes are closed right now, or None (from cached node readiness).

        ``others`` is the in-flight count excluding the asking request, when it is one.
        """
        cap = self.config.max_inflight
        n = self.inflight() if others is None else others
        if n >= self.config.degraded_ratio * cap:
            return f"inflight {n} of {cap}"
        if not self._node_ready_cached():
            return "a required service is down"
        return None

    async def write_refusal(self, others: int) -> str | None:
        """Like :meth:`degraded_reason`, but a cached "not ready" is re-checked first:
        a write is refused only on fresh evidence, never on a stale snapshot."""
        reason = self.degraded_reason(others)
        if reason is not None and self._ready_cache[1] is False:
            await self._refresh()
            reason = self.degraded_reason(others)
        return reason

    def _node_ready_cached(self) -> bool:
        stamp, ok = self._ready_cache
        if time.monotonic() - stamp > NODE_READY_TTL and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return ok

    def record_node_ready(self, ok: bool) -> None:
        """A fresh answer from the kernel, fetched by someone else (``/readyz``)."""
        self._ready_cache = (time.monotonic(), ok)

    async def _refresh(self) -> None:
        try:
            ok, _ = await self._node_ready()
        except Exception:
            ok = False
        self.record_node_ready(ok)
        self._refreshing = None

    async def prime(self) -> None:
        """Fetch node readiness once so the first write is judged on fresh state."""
        with contextlib.suppress(Exception):
            await self._refresh()

    def begin(self) -> None:
        self._counters.add(1)

    def end(self) -> None:
        self._counters.add(-1)

    # --- the decision -------------------------------------------------------------------

    async def admit(
        self,
        *,
        route: str,
        write: bool,
        api_key: str | None,
        client_host: str | None,
        tenant_name: str | None = None,
    ) -> Admitted:
        n = self.inflight()
        if n > self.config.max_inflight:  # this request is already counted in n
            self.rejected.labels("inflight").inc()
            raise Overloaded("the node is at capacity; retry later")
        if write:
            reason = await self.write_refusal(others=n - 1)
            if reason is not None:
                self.rejected.labels("degraded").inc()
                raise Overloaded(f"writes are closed while degraded ({reason})")
        if tenant_name is not None:
            tenant = self.tenants.named(tenant_name)
        else:
            try:
                tenant = self.tenants.resolve(api_key, client_host)
            except RonError:
                self.rejected.labels("unknown_key").inc()
                raise
        if not self.quotas.enabled:
            return Admitted(tenant, None)
        try:
            verdict = self.quotas.admit(tenant)
        except QuotaExhausted:
            self.quota_exhaustions.labels(route).inc()
            self.rejected.labels("quota").inc()
            raise
        return Admitted(tenant, verdict)

    def admit_read_now(
        self, client_host: str | None, nbytes: int, now: float
    ) -> tuple[Tenant, bytes] | None:
        """Admission of an anonymous read whose response (``nbytes``) is known, at
        ``now`` (``time.monotonic()``), decided synchronously for the fast lane: its
        tenant and its ``RateLimit-Policy`` and ``RateLimit`` head lines (empty while
        quotas are off), or None whenever the answer is not a plain yes (capacity,
        quota), so the ordinary path decides and answers with the envelope.

        A refused bucket take charges nothing, so asking again there is harmless; only
        a byte bucket already in debt costs that tenant one extra request token.
        """
        # Decided and answered without yielding, so it is never seen in flight: the
        # cap is checked as if it were (>=, where admit() counts itself first and >).
        if self.inflight() >= self.config.max_inflight:
            return None
        tenant = self.tenants.resolve(None, client_host)
        quotas = self.quotas
        if not quotas.enabled:
            return tenant, b""
        buckets = quotas.buckets
        if nbytes > 0:
            # The common case: both buckets admit on this worker's views; no verdicts.
            left = buckets.take_read(tenant.request_spec, tenant.bytes_spec, nbytes, now)
            if left is not None:
                return tenant, tenant.ratelimit_lines(left)
            request = (tenant.request_key, 1.0, tenant.rps, tenant.burst)
            volume = (tenant.bytes_key, float(nbytes), tenant.bytes_per_s, tenant.bytes_burst)
            verdict, spent = buckets.take_pair(request, volume, now)
            if not verdict.allowed or (spent is not None and not spent.allowed):
                return None
        else:  # HEAD: no bytes to charge, as on the ordinary path
            verdict = buckets.take(tenant.request_key, 1.0, tenant.rps, tenant.burst, now)
            if not verdict.allowed:
                return None
        return tenant, ratelimit_lines(tenant, verdict)

    def charge_bytes(self, admitted: Admitted, route: str, nbytes: int) -> None:
        if admitted.tenant is None or not self.quotas.enabled or nbytes <= 0:
            return
        try:
            self.quotas.charge_bytes(admitted.tenant, nbytes)
        except QuotaExhausted:
            self.quota_exhaustions.labels(route).inc()
            self.rejected.labels("quota_bytes").inc()
            raise
