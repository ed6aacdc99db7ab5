"""Even shares of connections across a service's worker processes (the gateway's, the
OAP server's).

Every worker listens on the one socket the kernel owns. Left to the OS, whichever worker
wakes first accepts every connection waiting, so a client with a few keep-alive
connections (a load generator, a reverse proxy in front of the node) often lands all of
them on one worker and leaves the other cores idle: measured with 4 connections over 2
workers, 3 runs in 12 were 4-0 and only 4 were 2-2.

:class:`BalancedListener` accepts instead of the event loop's server and keeps the
shares even, as Envoy's ``exact_balance`` does between threads: each worker publishes
how many connections it holds in a shared table (one slot per worker, no lock), and a
worker that holds more than the least-loaded one lets a waiting connection go to that
worker for a moment. If nobody takes it within ``MAX_DEFER_S`` (the other worker is
busy, or gone and restarting), it accepts anyway, so balancing can delay a connection by
at most a few milliseconds and can never strand one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sized
from pathlib import Path
from ssl import SSLContext

from ron.quota.shared import SharedCounters

log = logging.getLogger("ron.balance")

DEFER_S = 0.001
MAX_DEFER_S = 0.004
# Out of descriptors: stop accepting for a moment rather than spin on the ready socket.
_BACKOFF_S = 0.1
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ConnectionShares:
    """This worker's slot in the table of open connections per worker."""

    def __init__(self, path: Path, slot: int, workers: int) -> None:
        self._counters = SharedCounters(path, slot)
        self._slot = slot
        self._workers = workers

    def publish(self, held: int) -> None:
        self._counters.add(held - self._counters.value)

    def least_other(self) -> int | None:
        """The fewest connections any other worker holds (None when alone)."""
        values = self._counters.values(self._workers)
        others = [v for i, v in enumerate(values) if i != self._slot]
        return min(others) if others else None

    def close(self) -> None:
        self._counters.close()


class BalancedListener:
    """Accepts from ``sock`` and hands each connection to ``factory``'s protocol, deferring
    to a less-loaded worker when there is one (see the module's docstring).

    ``held`` is the live set of this worker's connections (uvicorn's
    ``server_state.connections``, the OAP gate's ``live``); accepted connections not yet
    in it count too. The object stands in for an ``asyncio.Server`` (``close``,
    ``wait_closed``, ``is_serving``). With ``ssl`` each connection is served over TLS
    (the handshake within ``ssl_handshake_timeout``), as ``create_server`` would.
    """

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        held: Sized,
        shares: ConnectionShares,
        *,
        max_defer_s: float = MAX_DEFER_S,
        ssl: SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._max_defer_s = max_defer_s
        self._sock = sock
        self._factory = factory
        self._held = held
        self._shares = shares
        self._opening = 0  # accepted, transport not made yet
        self._deferred_at: float | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def count(self) -> int:
        """Connections this worker holds or has accepted and not yet handed over.

        Never more than the connections it really has: a share published one too high
        makes the other worker take one too many.
        """
        return len(self._held) + self._opening

    def _on_readable(self) -> None:
        while not self._closed:
            held = self.count()
            self._shares.publish(held)
            least = self._shares.least_other()
            now = self._loop.time()
            if least is not None and held > least:
                if self._deferred_at is None:
                    self._deferred_at = now
                if now - self._deferred_at < self._max_defer_s:
                    self._pause(DEFER_S)
                    return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                self._deferred_at = None  # another worker took it
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    log.warning("accept failed (%s); pausing", exc.strerror)
                    self._pause(_BACKOFF_S)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client left while queued: nothing to serve
                raise
            self._deferred_at = None
            self._opening += 1
            self._shares.publish(self.count())
            task = self._loop.create_task(self._open(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self, delay: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._retry = self._loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._on_readable()

    async def _open(self, conn: socket.socket) -> None:
        # The connection stops counting as "opening" when its protocol is made, before
        # the protocol's connection_made puts it in ``held``: for that moment it counts
        # once too few (a deferral waits a loop turn longer), never twice.
        made = False

        def protocol() -> asyncio.Protocol:
            nonlocal made
            made = True
            self._opening -= 1
            made_protocol = self._factory()
            lost = made_protocol.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                # Publish the share as soon as it drops: the other worker reads this
                # slot when its next connection arrives, and a share left at what this
                # worker once held would send two clients reconnecting together to it.
                lost(exc)
                if not self._closed:
                    self._shares.publish(self.count())

            made_protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            return made_protocol

        try:
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is None:
                await self._loop.connect_accepted_socket(protocol, conn)
            else:
                await self._loop.connect_accepted_socket(
                    protocol,
                    conn,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self._ssl_handshake_timeout,
                )
        except OSError:
            conn.close()  # reset before it could be served: nothing to clean up
        finally:
            if not made:
                self._opening -= 1

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Stop accepting (the socket itself stays the kernel's)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._shares.publish(0)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
