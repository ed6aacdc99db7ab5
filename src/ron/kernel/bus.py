"""The kernel's bounded broadcast bus.

Every subscriber sees every event published after it subscribed, in order, unless it
falls more than ``capacity`` events behind: then it loses the *oldest* events it had
not read yet (like tokio's broadcast channel), the loss is counted, and the bus
publishes ``ServiceCrashed{service:"bus-overflow"}`` at most once per
``overflow_notice_interval`` seconds. Publishing is synchronous and never blocks or
awaits, so a stuck consumer can never stall the supervisor or a request path.

One ring buffer serves all subscribers; each subscriber only holds a cursor, so
memory is bounded by ``capacity`` whatever the number of subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ron.kernel.events import KernelEvent

if TYPE_CHECKING:
    from ron.kernel.metrics import Metrics

DEFAULT_CAPACITY = 4096
OVERFLOW_SERVICE = "bus-overflow"


class Bus:
    """Bounded broadcast of :class:`KernelEvent`; see the module docstring."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        metrics: Metrics | None = None,
        overflow_notice_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("bus capacity must be at least 1")
        self.capacity = capacity
        self._ring: deque[KernelEvent] = deque(maxlen=capacity)
        self._next_seq = 0  # sequence number the next published event gets
        self._metrics = metrics
        self._notice_interval = overflow_notice_interval
        self._last_notice: float | None = None
        self._clock = clock
        self._waiters: set[asyncio.Future[None]] = set()
        self.dropped_total = 0
        self.lagged_total = 0

    @property
    def _oldest_seq(self) -> int:
        return self._next_seq - len(self._ring)

    def publish(self, event: KernelEvent) -> int:
        """Append ``event`` for every subscriber; returns its sequence number. Never blocks."""
        seq = self._next_seq
        self._ring.append(event)
        self._next_seq += 1
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        return seq

    def subscribe(self) -> Subscription:
        """A cursor that starts at the next event to be published."""
        return Subscription(self, self._next_seq)

    def _account_lag(self, lost: int) -> None:
        """A subscriber found ``lost`` events overwritten before it read them."""
        self.dropped_total += lost
        self.lagged_total += 1
        if self._metrics is not None:
            self._metrics.bus_overflow_dropped_total.inc(lost)
            self._metrics.bus_lagged_total.inc()
        now = self._clock()
        if self._last_notice is None or now - self._last_notice >= self._notice_interval:
            self._last_notice = now
            self.publish(
                KernelEvent.ServiceCrashed(
                    OVERFLOW_SERVICE, f"a subscriber lagged and lost {lost} events"
                )
            )

    async def _wait_beyond(self, seq: int) -> None:
        while self._next_seq <= seq:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(fut)
            try:
                await fut
            finally:
                self._waiters.discard(fut)


class Subscription:
    """One subscriber's position on the bus; iterate it or call :meth:`recv`."""

    def __init__(self, bus: Bus, cursor: int) -> None:
        self._bus = bus
        self._cursor = cursor
        self.lost = 0

    def pending(self) -> int:
        """How many published events this subscriber has not read (capped by capacity)."""
        return self._bus._next_seq - max(self._cursor, self._bus._oldest_seq)

    def try_recv(self) -> KernelEvent | None:
        """The next event if one is ready, else None; skips (and counts) lost events."""
        bus = self._bus
        oldest = bus._oldest_seq
        lost = 0
        if self._cursor < oldest:
            lost = oldest - self._cursor
            self._cursor = oldest
        event: KernelEvent | None = None
        if self._cursor < bus._next_seq:
            event = bus._ring[self._cursor - oldest]
            self._cursor += 1
        if lost:
            # Accounted after the read: the overflow notice it may publish must not
            # evict the event we are about to return.
            self.lost += lost
            bus._account_lag(lost)
        return event

    async def recv(self, timeout: float | None = None) -> KernelEvent:
        """Wait for the next event; raises TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = self.try_recv()
                if event is not None:
                    return event
                await self._bus._wait_beyond(self._cursor)

    async def wait_for(
        self, predicate: Callable[[KernelEvent], bool], timeout: float | None = None
    ) -> KernelEvent:
        """Skip events until one matches ``predicate``; raises TimeoutError at the deadline."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv()
                if predicate(event):
                    return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> KernelEvent:
        return await self.recv()
