"""Waking waiters without polling: per-topic signals and one timer for lease expiry.

A long-poll receive must return the moment a message becomes available, which
happens for exactly three reasons: a send, a release (NACK, redrive), or time passing
(a lease expires, a NACK delay ends). The first two call :meth:`Signals.notify` on
the spot; the third is :class:`DueTimer`'s job: one task sleeping until the earliest
due time of any topic, which releases that topic's due messages and notifies.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Hashable, Iterable

log = logging.getLogger("ron.mailbox")


class Signals:
    """Waiters keyed by (kind, topic); ``notify`` wakes every current waiter of a key.

    Callers check their condition and then wait *without awaiting in between* (the
    store is synchronous), so a notify can never fall between check and wait.
    """

    def __init__(self) -> None:
        self._waiters: dict[Hashable, set[asyncio.Future[None]]] = {}

    def notify(self, key: Hashable) -> None:
        for fut in self._waiters.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    def notify_all(self) -> None:
        for key in list(self._waiters):
            self.notify(key)

    def waiting(self) -> int:
        """Distinct waiters (one may wait on several keys)."""
        return len(set().union(*self._waiters.values()))

    async def wait(self, keys: Iterable[Hashable], timeout: float) -> bool:
        """True when notified, False at the timeout."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = list(keys)
        for key in keys:
            self._waiters.setdefault(key, set()).add(fut)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            for key in keys:
                group = self._waiters.get(key)
                if group is not None:
                    group.discard(fut)
                    if not group:
                        del self._waiters[key]


class DueTimer:
    """Sleeps until the earliest scheduled time of any topic, then calls ``on_due``.

    ``on_due(topic)`` releases what is due and returns the topic's next due time (wall
    ms) or None. Only the earliest time per topic is kept: a later lease in a topic that
    already has an earlier wake-up adds nothing, so the heap stays about one entry per
    busy topic whatever the message rate.
    """

    def __init__(self, clock_ms: Callable[[], int], on_due: Callable[[str], int | None]) -> None:
        self._clock = clock_ms
        self._on_due = on_due
        self._heap: list[tuple[int, str]] = []
        self._next: dict[str, int] = {}
        self._changed = asyncio.Event()

    def schedule(self, topic: str, at_ms: int) -> None:
        current = self._next.get(topic)
        if current is not None and current <= at_ms:
            return
        self._next[topic] = at_ms
        heapq.heappush(self._heap, (at_ms, topic))
        if self._heap[0] == (at_ms, topic):
            self._changed.set()

    def scheduled(self, topic: str) -> int | None:
        return self._next.get(topic)

    async def run(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                at, topic = heapq.heappop(self._heap)
                if self._next.get(topic) != at:
                    continue  # superseded by an earlier wake-up that already ran
                del self._next[topic]
                try:
                    nxt = self._on_due(topic)
                except Exception:
                    log.exception("releasing due messages failed", extra={"topic": topic})
                    nxt = now + 1000
                if nxt is not None:
                    # Never schedule into the past: a clock step back must not spin.
                    self.schedule(topic, max(nxt, self._clock() + 1))
                now = self._clock()
            self._changed.clear()
            delay = (self._heap[0][0] - now) / 1000 if self._heap else None
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass
