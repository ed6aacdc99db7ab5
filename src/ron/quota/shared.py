"""Token buckets shared by every gateway worker process of a node.

A tenant must not get N times its quota by spreading requests over N workers, so the
buckets live in one memory-mapped file that all workers map. Each operation takes an
exclusive ``flock`` on the file for a few microseconds: cheap next to an HTTP request,
and released by the kernel if a worker dies holding it (a SIGKILL never wedges quotas).

The table is open addressing over fixed slots keyed by a 16-byte BLAKE3 of the tenant
id. When the probe window is full, the slot idle longest is reused: a bucket idle long
enough has refilled to its burst, so forgetting it changes nothing a client can see.

Buckets may go into debt: a request is admitted whenever the bucket holds at least one
token, and its full cost (e.g. the bytes of a large object) is then taken, so one big
object larger than the burst is still servable, and the tenant then waits it off.

Settling in batches: the lock and the table update cost about as much as the rest of a
small GET's admission, so a worker may admit a tenant's requests on its own view for up
to ``SETTLE_S`` (10 ms) after it last settled with the table, charging at most a
*lease* of ``rate * SETTLE_S`` tokens (what the tenant earns in those 10 ms), and only
while its view keeps at least another lease in the bucket; then it settles: the tokens
it charged locally are taken from the shared bucket (always: they were admitted), and
the new request is judged on the shared state. Every admitted token is charged; what
batching changes is *when*. A tenant whose rate is under 100 per second has a lease
under one token and is judged by the table on every request, exactly as before; a
faster one may, for at most 10 ms, be admitted past an empty bucket by what the other
workers admitted in their own windows (at most one lease each), and then owes it.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
from pathlib import Path
from typing import NamedTuple

import blake3

# key (16s) | tokens (d) | stamp (d)  -- one bucket per slot
_SLOT = struct.Struct("<16sdd")
_HEADER = 64
PROBES = 16
SETTLE_S = 0.01
LOCAL_KEYS = 4096

# (bucket key, rate per second, burst): what a take needs besides its cost and the time.
Spec = tuple[str, float, float]


class _Local:
    """A worker's view of one bucket since it last settled, and what it charged since."""

    __slots__ = ("debt", "lease", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float, lease: float) -> None:
        self.tokens = tokens  # the shared bucket's tokens right after that settle
        self.stamp = stamp
        self.lease = lease
        self.debt = 0.0  # admitted here since, not yet taken from the shared bucket


class Verdict(NamedTuple):
    """The outcome of one admission check, with what the RateLimit headers need.

    A named tuple: one is made per request and per charge, and building a tuple costs a
    fraction of a frozen dataclass."""

    allowed: bool
    remaining: float
    retry_after: float  # seconds until a request would be admitted (0 when allowed)
    reset: float  # seconds until the bucket is full again


def _map_file(path: Path, size: int) -> tuple[int, mmap.mmap]:
    """Open (creating and growing as needed) and map ``path``; returns (fd, map)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise


class SharedBuckets:
    """A fixed-size table of token buckets in a file shared across processes."""

    def __init__(self, path: Path, slots: int = 8192, *, shared: bool = True) -> None:
        """``shared=False`` when this process is the table's only user (one gateway
        worker): the lock then protects nothing and its two syscalls are skipped."""
        self.path = path
        self.slots = slots
        self._locking = shared
        self._fd, self._map = _map_file(path, _HEADER + slots * _SLOT.size)
        # key -> (digest, slot it was last found in): the probe is skipped while the
        # slot still holds the digest (another worker may have reused it since).
        self._known: dict[str, tuple[bytes, int]] = {}
        self._local: dict[str, _Local] = {}
        self.settles = 0  # takes that went to the shared table (the rest were local)

    def close(self) -> None:
        self.settle_all(math.inf)
        self._map.close()
        os.close(self._fd)

    def settle_all(self, now: float) -> None:
        """Take every locally charged token from the shared table now (at close, and
        before forgetting local views)."""
        if not any(local.debt for local in self._local.values()):
            self._local.clear()
            return
        self._lock()
        try:
            self._charge_debts()
        finally:
            self._unlock()

    def _lock(self) -> None:
        if self._locking:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._locking:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, key: str, cost: float, rate: float, burst: float, now: float) -> Verdict:
        """Admit and charge ``cost`` tokens, or refuse and say when to come back."""
        verdict = self._local_take(key, cost, rate, burst, now)
        if verdict is not None:
            return verdict
        self._lock()
        try:
            return self._settle(key, cost, rate, burst, now)
        finally:
            self._unlock()

    def take_pair(
        self,
        first: tuple[str, float, float, float],
        second: tuple[str, float, float, float],
        now: float,
    ) -> tuple[Verdict, Verdict | None]:
        """Two takes, each ``(key, cost, rate, burst)``; the second only when the first
        is allowed (None otherwise). A request whose response size is already known
        charges its request and byte buckets with at most one lock round trip."""
        verdict = self._local_take(*first, now)
        if verdict is not None:
            second_verdict = self._local_take(*second, now)
            if second_verdict is not None:
                return verdict, second_verdict
            self._lock()
            try:
                return verdict, self._settle(*second, now)
            finally:
                self._unlock()
        self._lock()
        try:
            verdict = self._settle(*first, now)
            return verdict, self._settle(*second, now) if verdict.allowed else None
        finally:
            self._unlock()

    def take_read(self, request: Spec, volume: Spec, nbytes: float, now: float) -> float | None:
        """One request token and ``nbytes`` byte tokens, each ``(key, rate, burst)``,
        when this worker's views of both buckets admit them (see the module docstring):
        the request bucket's tokens left, else None and nothing charged, so the caller
        asks :meth:`take_pair`, which settles.

        The same decisions as two :meth:`_local_take` calls, written out in one frame
        with no verdicts built: on a live gateway each extra call and object of the
        per-request path costs several times what it costs in a tight loop (caches
        are cold between requests), and this runs once per small GET."""
        local = self._local
        rkey, rate, burst = request
        view = local.get(rkey)
        if view is None:
            return None
        bkey, brate, bburst = volume
        bview = local.get(bkey)
        if bview is None:
            return None
        age = now - view.stamp
        bage = now - bview.stamp
        debt = view.debt + 1.0
        bdebt = bview.debt + nbytes
        if not (0.0 <= age < SETTLE_S and 0.0 <= bage < SETTLE_S):
            return None
        lease = view.lease
        blease = bview.lease
        if debt > lease or bdebt > blease:
            return None
        tokens = min(burst, view.tokens + age * rate) - debt
        if tokens < lease or min(bburst, bview.tokens + bage * brate) - bdebt < blease:
            return None
        view.debt = debt
        bview.debt = bdebt
        return tokens

    def _local_take(
        self, key: str, cost: float, rate: float, burst: float, now: float
    ) -> Verdict | None:
        """Admit on this worker's view (see the module docstring), or None to settle."""
        local = self._local.get(key)
        if local is None:
            return None
        age = now - local.stamp
        debt = local.debt + cost
        if not 0.0 <= age < SETTLE_S or debt > local.lease:
            return None
        tokens = min(burst, local.tokens + age * rate) - debt
        if tokens < local.lease:  # near empty: the shared table decides
            return None
        local.debt = debt
        return Verdict(True, tokens, 0.0, (burst - tokens) / rate)

    def _settle(self, key: str, cost: float, rate: float, burst: float, now: float) -> Verdict:
        """Under the lock: charge what was admitted locally, then judge this take."""
        local = self._local.pop(key, None)
        verdict, tokens = self._take(key, cost, rate, burst, now, local.debt if local else 0.0)
        self.settles += 1
        lease = rate * SETTLE_S
        if lease >= 1.0 and verdict.allowed:
            if len(self._local) >= LOCAL_KEYS:
                self._charge_debts()  # charge before forgetting
            self._local[key] = _Local(tokens, now, lease)
        return verdict

    def _charge_debts(self) -> None:
        """Under the lock: take every local view's debt from its bucket, forget views.

        A bucket whose slot was since given to another tenant was idle long enough to be
        full again; its debt (at most one lease) goes with it."""
        for key, local in self._local.items():
            known = self._known.get(key)
            if not local.debt or known is None:
                continue
            digest, index = known
            offset = _HEADER + index * _SLOT.size
            stored, tokens, stamp = _SLOT.unpack_from(self._map, offset)
            if stored == digest:
                _SLOT.pack_into(self._map, offset, digest, tokens - local.debt, stamp)
        self._local.clear()

    def _take(
        self, key: str, cost: float, rate: float, burst: float, now: float, debt: float = 0.0
    ) -> tuple[Verdict, float]:
        """One take on the table after charging ``debt`` (tokens already admitted);
        the caller holds the lock when the table is shared. Returns the verdict and the
        bucket's tokens after it (negative while in debt)."""
        known = self._known.get(key)
        if known is None:
            digest = blake3.blake3(key.encode()).digest(16)
            index = -1
        else:
            digest, index = known
        if index >= 0:
            offset = _HEADER + index * _SLOT.size
            stored, tokens, stamp = _SLOT.unpack_from(self._map, offset)
        if index < 0 or stored != digest:
            start = int.from_bytes(digest[:8], "little") % self.slots
            index = self._find(digest, start, now, rate, burst)
            offset = _HEADER + index * _SLOT.size
            stored, tokens, stamp = _SLOT.unpack_from(self._map, offset)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[key] = (digest, index)
        if stored != digest:
            tokens, stamp = burst, now
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate) - debt
        allowed = tokens >= min(cost, 1.0)
        if allowed:
            tokens -= cost
        _SLOT.pack_into(self._map, offset, digest, tokens, max(now, stamp))
        missing = max(0.0, min(cost, 1.0) - tokens) if not allowed else 0.0
        retry = missing / rate if rate > 0 else math.inf
        reset = (burst - tokens) / rate if rate > 0 else math.inf
        return Verdict(allowed, max(0.0, tokens), retry, max(0.0, reset)), tokens

    def _find(self, digest: bytes, start: int, now: float, rate: float, burst: float) -> int:
        oldest_index, oldest_stamp = start, math.inf
        for i in range(PROBES):
            index = (start + i) % self.slots
            stored, _, stamp = _SLOT.unpack_from(self._map, _HEADER + index * _SLOT.size)
            if stored == digest or stored == bytes(16):
                return index
            if stamp < oldest_stamp:
                oldest_index, oldest_stamp = index, stamp
        return oldest_index


class SharedCounters:
    """One gauge slot per worker, summed by any reader (inflight across workers).

    Each worker writes only its own slot, so no lock is needed, and a restarted worker
    zeroes its slot at start: a SIGKILLed worker cannot leak phantom in-flight requests.
    """

    _CELL = struct.Struct("<q")

    def __init__(self, path: Path, slot: int, slots: int = 64) -> None:
        if not 0 <= slot < slots:
            raise ValueError("worker slot out of range")
        fd, self._map = _map_file(path, slots * self._CELL.size)
        os.close(fd)  # the map stays valid; counters need no lock
        self._slots = slots
        self._all = struct.Struct(f"<{slots}q")
        self._offset = slot * self._CELL.size
        self.value = 0
        self._CELL.pack_into(self._map, self._offset, 0)

    def add(self, delta: int) -> None:
        self.value += delta
        self._CELL.pack_into(self._map, self._offset, self.value)

    def total(self) -> int:
        return sum(self._all.unpack_from(self._map, 0))

    def values(self, n: int) -> tuple[int, ...]:
        """The first ``n`` workers' slots, in slot order."""
        return self._all.unpack_from(self._map, 0)[:n]

    def close(self) -> None:
        self._map.close()
