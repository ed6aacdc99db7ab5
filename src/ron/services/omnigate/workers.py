"""What the omnigate worker processes of one node share: quota buckets and in-flight.

With ``omnigate.workers = N`` the kernel starts N omnigate processes on the one listening
socket, and the kernel decides which of them accepts each connection. A tenant must not
get N times its quota by spreading connections over workers, and ``max_inflight`` is a
node-wide cap, so both live in memory-mapped files under the run directory that every
worker maps (:mod:`ron.quota.shared`, as for the gateway's workers). With one worker
none of this is used: its in-process buckets and counter cost no syscall.
"""

from __future__ import annotations

from pathlib import Path

from ron.quota.shared import SharedBuckets, SharedCounters


class SharedGateState:
    """Quota buckets and in-flight counters shared by every omnigate worker of a node."""

    def __init__(self, run_dir: Path, slot: int, slots: int) -> None:
        """``slot`` is this worker's in-flight cell; ``slots`` the bucket table size
        (``omnigate.quota_table_size``; the file keeps it until the node restarts)."""
        self._buckets = SharedBuckets(run_dir / "omnigate-quota.buckets", slots, shared=True)
        self._counters = SharedCounters(run_dir / "omnigate-inflight.counters", slot)

    def take(
        self, tenant_id: int | str, app_proto_id: int, *, rate: float, burst: float, now: float
    ) -> float | None:
        """Charge one request to (tenant, app); ``None`` when admitted, else seconds to
        wait. Numeric and named tenants never share a bucket (the key names the type)."""
        key = f"{app_proto_id}:{type(tenant_id).__name__}:{tenant_id}"
        verdict = self._buckets.take(key, 1.0, rate, burst, now)
        return None if verdict.allowed else verdict.retry_after

    def inflight(self) -> int:
        """Requests in flight on every worker of the node."""
        return self._counters.total()

    def add_inflight(self, delta: int) -> None:
        self._counters.add(delta)

    def close(self) -> None:
        self._buckets.close()
        self._counters.close()
