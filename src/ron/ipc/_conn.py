"""One framed connection: an asyncio Protocol around :class:`FrameReader` with flow control.

Why a Protocol and not StreamReader: the loop hands us each read as one ``bytes`` object
and the sans-IO reader parses frames straight out of it, so small calls cost one parse
and one future wake-up, with no intermediate stream buffer. Backpressure is explicit in
both directions: decoded-but-unconsumed messages beyond a small high-water mark pause
reading from the socket (so a fast sender of a stream is slowed by the kernel's socket
buffer, not by our memory), and writers await :meth:`drain` while the transport's
write buffer is above its limit.

Exactly one task receives at a time; the server and client state machines guarantee it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

from ron.ipc.framing import CHUNK_SIZE, BytesLike, FrameError, FrameReader, chunk_header

# Inbound messages buffered before we stop reading the socket. With 64 KiB chunks this
# bounds a connection's decoded backlog to about 0.5 MiB; a single oversized read can
# overshoot once, which is still bounded by the read size.
_INBOX_HIGH: Final = 8
_INBOX_LOW: Final = 2

# Transport write buffer limits: large enough to keep the socket full while a 64 KiB
# chunk is being produced, small enough that a slow reader stops a fast writer quickly.
_WRITE_HIGH: Final = 512 * 1024
_WRITE_LOW: Final = 128 * 1024

# The kernel's default AF_UNIX send buffer (~208 KiB) holds about three chunks, so a
# stream ping-pongs between the two processes on every few frames. 2 MiB measured
# ~2x the throughput of the default on 256 MiB streams; the memory is only used while
# data is queued for a slow reader, and the kernel clamps it to net.core.wmem_max.
_SOCKET_SNDBUF: Final = 2 * 1024 * 1024


class ConnectionLost(Exception):
    """The connection ended (EOF, reset, local close). Private to the transport: the
    server just drops the connection and the client maps it to ``upstream_unavailable``."""


class FramedProtocol(asyncio.Protocol):
    """Frames in, frames out, on one stream socket."""

    def __init__(
        self,
        max_frame: int,
        on_made: Callable[[FramedProtocol], None] | None = None,
    ) -> None:
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self._reader = FrameReader(max_frame)
        self._inbox: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None  # terminal: FrameError or ConnectionLost
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()  # protocols are built by the running loop
        # Set by owners: True while nothing is in progress (server: between calls).
        self.idle = True
        # Set by owners: called once when the peer goes away (EOF or reset), so a
        # server can cancel work nobody is waiting for any more.
        self.on_lost: Callable[[], object] | None = None

    # ---- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._lost = self._loop.create_future()
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_SNDBUF)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        reader = self._reader
        try:
            msgs = reader.feed(data)
        except FrameError:
            msgs = []
        if msgs:
            self._inbox.extend(msgs)
            self._wake()
        if reader.error is not None:
            # Stop reading for good; messages before the bad frame are still delivered.
            self._fail(reader.error)
            self._pause_reading()
        elif len(self._inbox) >= _INBOX_HIGH:
            self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool | None:
        self._fail(ConnectionLost("peer closed the connection"))
        # Keep our write side open: an error reply already being produced for what the
        # peer sent still goes out; the owner closes the connection when it is done.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed")
        if exc is not None:
            lost.__cause__ = exc
        self._fail(lost)
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(ConnectionLost("connection lost while writing"))
        self._drain_waiters.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    # ---- internals ---------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()
        if isinstance(exc, ConnectionLost) and self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    # ---- API for the server and client -------------------------------------------

    @property
    def peer_closed(self) -> bool:
        """True once EOF or a reset was seen (queued messages may still be unread)."""
        return isinstance(self._error, ConnectionLost)

    @property
    def usable(self) -> bool:
        """True while the connection can carry another call."""
        return (
            self._error is None
            and not self._inbox
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def peer_gone(self) -> bool:
        """True if an idle connection has anything to read (EOF, reset, stray bytes).

        Why: after a service restarts, pooled connections to the old process are dead,
        but the loop may not have processed their EOF yet. One zero-timeout poll() before
        reuse turns "first call after a restart fails" into a fresh connect.
        """
        transport = self.transport
        if transport is None:
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    async def recv(self, deadline: float | None = None) -> dict[str, Any]:
        """The next message; raises FrameError/ConnectionLost/TimeoutError (at ``deadline``,
        loop time). Already-decoded messages are returned before a terminal error so that
        a reply sent just before the peer closed is still seen."""
        while True:
            if self._inbox:
                msg = self._inbox.popleft()
                if self._reading_paused and self._error is None and len(self._inbox) <= _INBOX_LOW:
                    self._reading_paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                return msg
            if self._error is not None:
                raise self._error
            assert self._waiter is None, "concurrent recv on one connection"
            loop = self._loop
            waiter: asyncio.Future[None] = loop.create_future()
            timer = loop.call_at(deadline, self._expire, waiter) if deadline is not None else None
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def send(self, data: bytes) -> None:
        """Queue one encoded frame (never blocks; pair with :meth:`drain`)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionLost("connection closed")
        transport.write(data)

    def send_chunk(self, cid: int, data: bytes | memoryview) -> None:
        """Queue one body chunk frame without copying ``data`` into a packed frame."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionLost("connection closed")
        transport.writelines((chunk_header(cid, len(data)), data))

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self._writing_paused:
            return
        if self._lost is None or self._lost.done():
            raise ConnectionLost("connection lost while writing")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def close(self) -> None:
        """Close after flushing what was already queued (an error reply, say)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding anything unsent."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)


def pieces(chunk: BytesLike) -> list[bytes | memoryview]:
    """Split a caller's chunk into frames of at most CHUNK_SIZE.

    ``bytes`` are sliced through a memoryview (no copy, and safe to leave in a transport
    buffer because they are immutable); mutable buffers are copied once, because the
    caller may reuse them as soon as we return.
    """
    data: bytes | memoryview = chunk if isinstance(chunk, bytes) else bytes(chunk)
    size = len(data)
    if size <= CHUNK_SIZE:
        return [data]
    view = memoryview(data)
    return [view[i : i + CHUNK_SIZE] for i in range(0, size, CHUNK_SIZE)]
