"""The caller side of the IPC transport: a pooled client for one service socket.

Why a pool of one-call-at-a-time connections: the pool size is the caller's bound on
inflight calls to that service, a stream gets the socket's own flow control, and a
connection that fails in any way is simply dropped (never reused), so no call can ever
read another call's leftovers. Every failure surfaces as :class:`RonError` with a code
the caller can act on: ``upstream_unavailable`` (could not reach the service, or it
spoke nonsense), ``upstream_timeout`` (our deadline passed), or the service's own code.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final

from ron.ipc._conn import ConnectionLost, FramedProtocol, pieces
from ron.ipc.framing import MAX_FRAME, BytesLike, FrameError, encode, encode_end
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["IpcClient"]

# The deadline sent to the server is a little shorter than ours, so that when a handler
# overruns, the server's definitive ``timeout`` reply normally arrives before our own
# timer fires -- and the connection stays reusable instead of being discarded.
_MARGIN_MAX: Final = 0.02
_MARGIN_FRACTION: Final = 0.1


def _wire_budget(remaining: float) -> float:
    return remaining - min(_MARGIN_MAX, remaining * _MARGIN_FRACTION)


def _remote_error(msg: dict[str, Any]) -> RonError:
    """Re-create the service's RonError from an ``err`` reply."""
    err: dict[str, Any] = msg["err"]
    message: str = err["message"]
    try:
        code = ErrorCode(err["code"])
    except ValueError:  # a newer peer's code: keep it visible, treat as internal
        code = ErrorCode.INTERNAL
        message = f"[{err['code']}] {message}"
    retry_after = err.get("retry_after")
    return RonError(
        code,
        message,
        retry_after=float(retry_after) if retry_after is not None else None,
        extra=err.get("extra") or None,
    )


class IpcClient:
    """Calls methods of the service listening on the Unix socket ``path``.

    ``pool_size`` bounds both the open connections and the calls in flight; a call that
    finds the pool exhausted waits for a connection within its own deadline.
    ``default_timeout`` is the whole-call budget (including any stream) when a call
    gives none. Connections are opened lazily, so a client can be created before the
    service is up and survives the service restarting.
    """

    def __init__(
        self,
        path: str,
        *,
        pool_size: int = 16,
        max_frame: int = MAX_FRAME,
        default_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be positive")
        self._path = path
        self._pool_size = pool_size
        self._max_frame = max_frame
        self._default_timeout = default_timeout
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[FramedProtocol] = []
        self._busy: set[FramedProtocol] = set()
        self._ids = itertools.count(1)  # 0 is reserved for connection-level errors
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    # ---- calls -------------------------------------------------------------------

    async def call(
        self, method: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` and return its reply value; raises RonError on any failure."""
        deadline = self._deadline(timeout)
        conn = await self._acquire(deadline)
        reusable = False
        try:
            cid = next(self._ids)
            reusable = True  # nothing sent yet: a failure to encode leaves it clean
            self._send_request(conn, cid, method, args, deadline, stream=False)
            reusable = False
            msg = await self._recv(conn, deadline, method)
            if msg["id"] == cid and "ok" in msg and not msg.get("s", False):
                reusable = True
                return msg["ok"]
            reusable = msg["id"] == cid and "err" in msg
            raise self._unexpected(msg, cid, method)
        finally:
            self._release(conn, reusable)

    async def call_stream_in(
        self,
        method: str,
        args: Mapping[str, Any] | None,
        body: AsyncIterable[BytesLike],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method`` uploading ``body`` as it is produced; return the reply value.

        The upload runs concurrently with waiting for the reply, so a service that
        answers early (an error, say) is heard at once; the rest of the body is then
        abandoned and the connection dropped. An exception raised by ``body`` itself
        propagates unchanged after the connection is dropped (the service sees an
        incomplete body).
        """
        deadline = self._deadline(timeout)
        conn = await self._acquire(deadline)
        reusable = False
        upload: asyncio.Task[None] | None = None
        try:
            cid = next(self._ids)
            reusable = True
            self._send_request(conn, cid, method, args, deadline, stream=True)
            reusable = False
            upload = asyncio.get_running_loop().create_task(_upload(conn, cid, body))
            try:
                msg = await self._recv(conn, deadline, method)
            except RonError:
                if upload.done() and not upload.cancelled():
                    failure = upload.exception()
                    if failure is not None and not isinstance(failure, ConnectionLost):
                        raise failure from None
                raise
            upload_ok = upload.done() and not upload.cancelled() and upload.exception() is None
            if msg["id"] == cid and "ok" in msg and not msg.get("s", False):
                reusable = upload_ok
                return msg["ok"]
            reusable = upload_ok and msg["id"] == cid and "err" in msg
            raise self._unexpected(msg, cid, method)
        finally:
            if upload is not None:
                if not upload.done():
                    upload.cancel()
                await asyncio.gather(upload, return_exceptions=True)
            self._release(conn, reusable)

    def call_stream_out(
        self, method: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[tuple[Any, AsyncIterator[bytes]]]:
        """``async with client.call_stream_out(m, a) as (meta, chunks): async for c in chunks``.

        ``timeout`` covers the whole exchange including reading the stream. The
        connection returns to the pool only if the stream was read to its end (or ended
        with an error reply); leaving the block early drops it. A method that replies
        without streaming yields its value as ``meta`` and an empty iterator.
        """
        return _StreamOut(self, method, args, timeout)

    async def close(self) -> None:
        """Drop every connection; calls still in flight fail with upstream_unavailable."""
        self._closed = True
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        for conn in conns:
            conn.abort()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))

    # ---- pool --------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        budget = self._default_timeout if timeout is None else timeout
        return asyncio.get_running_loop().time() + budget

    async def _acquire(self, deadline: float) -> FramedProtocol:
        if self._closed:
            raise RonError(ErrorCode.UPSTREAM_UNAVAILABLE, f"{self._path}: client closed")
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            except TimeoutError:
                raise RonError(
                    ErrorCode.UPSTREAM_TIMEOUT,
                    f"{self._path}: no free connection (pool of {self._pool_size}) in time",
                ) from None
        else:
            await slots.acquire()
        try:
            if self._closed:
                raise RonError(ErrorCode.UPSTREAM_UNAVAILABLE, f"{self._path}: client closed")
            while self._idle:
                conn = self._idle.pop()  # most recently used first: its buffers are warm
                if conn.usable and not conn.peer_gone():
                    self._busy.add(conn)
                    return conn
                conn.abort()
            conn = await self._connect(deadline)
            self._busy.add(conn)
            return conn
        except BaseException:
            slots.release()
            raise

    async def _connect(self, deadline: float) -> FramedProtocol:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        limit = min(self._connect_timeout, remaining)
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                _, proto = await loop.create_unix_connection(
                    lambda: FramedProtocol(self._max_frame), self._path
                )
        except TimeoutError:
            if self._connect_timeout < remaining:
                raise RonError(
                    ErrorCode.UPSTREAM_UNAVAILABLE, f"{self._path}: connect timed out"
                ) from None
            raise RonError(
                ErrorCode.UPSTREAM_TIMEOUT, f"{self._path}: deadline passed while connecting"
            ) from None
        except OSError as exc:
            raise RonError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{self._path}: cannot connect ({exc.strerror or type(exc).__name__})",
            ) from exc
        return proto

    def _release(self, conn: FramedProtocol, reusable: bool) -> None:
        self._busy.discard(conn)
        if reusable and not self._closed and conn.usable:
            self._idle.append(conn)
        else:
            conn.abort()
        self._slots.release()

    # ---- wire --------------------------------------------------------------------

    def _send_request(
        self,
        conn: FramedProtocol,
        cid: int,
        method: str,
        args: Mapping[str, Any] | None,
        deadline: float,
        *,
        stream: bool,
    ) -> None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise RonError(ErrorCode.UPSTREAM_TIMEOUT, f"{method}: deadline passed before sending")
        payload = {} if args is None else args if type(args) is dict else dict(args)
        msg = {"id": cid, "m": method, "a": payload, "dl": _wire_budget(remaining), "s": stream}
        try:
            frame = encode(msg, self._max_frame)
        except FrameError as exc:
            raise RonError(exc.code, f"{method}: {exc.message}") from None
        except Exception as exc:
            raise RonError(
                ErrorCode.INTERNAL, f"{method}: arguments not encodable ({exc})"
            ) from exc
        try:
            conn.send(frame)
        except ConnectionLost:
            raise RonError(
                ErrorCode.UPSTREAM_UNAVAILABLE, f"{self._path}: connection lost"
            ) from None

    async def _recv(self, conn: FramedProtocol, deadline: float, method: str) -> dict[str, Any]:
        try:
            return await conn.recv(deadline)
        except TimeoutError:
            raise RonError(
                ErrorCode.UPSTREAM_TIMEOUT, f"{method} on {self._path}: deadline exceeded"
            ) from None
        except FrameError as exc:
            raise RonError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} on {self._path}: bad frame from service ({exc.message})",
            ) from None
        except ConnectionLost:
            raise RonError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} on {self._path}: connection lost",
            ) from None

    def _unexpected(self, msg: dict[str, Any], cid: int, method: str) -> RonError:
        """The error for any reply that is not this call's plain ``ok``."""
        if "err" in msg and msg["id"] in (cid, 0):
            return _remote_error(msg)
        if msg["id"] == cid and "ok" in msg:
            return RonError(ErrorCode.INTERNAL, f"{method} streams its reply; use call_stream_out")
        return RonError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"{method} on {self._path}: protocol error (unexpected frame for call {cid})",
        )


async def _upload(conn: FramedProtocol, cid: int, body: AsyncIterable[BytesLike]) -> None:
    try:
        async for chunk in body:
            if not chunk:
                continue
            for piece in pieces(chunk):
                conn.send_chunk(cid, piece)
                if conn.writing_paused:
                    await conn.drain()
        conn.send(encode_end(cid))
    except BaseException:
        conn.abort()  # the service must see an incomplete body, not a truncated one
        raise


class _Chunks:
    """The reply stream of one :meth:`IpcClient.call_stream_out`."""

    __slots__ = ("_cid", "_client", "_conn", "_deadline", "_method", "broken", "finished", "open")

    def __init__(
        self,
        client: IpcClient,
        conn: FramedProtocol | None,
        cid: int,
        deadline: float,
        method: str,
    ) -> None:
        self._client = client
        self._conn = conn
        self._cid = cid
        self._deadline = deadline
        self._method = method
        self.finished = conn is None
        self.broken = False
        self.open = True

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.finished:
            raise StopAsyncIteration
        if not self.open or self._conn is None:
            raise RuntimeError("stream read after its call_stream_out block ended")
        if self.broken:
            raise RonError(ErrorCode.UPSTREAM_UNAVAILABLE, f"{self._method}: stream broken")
        try:
            msg = await self._client._recv(self._conn, self._deadline, self._method)
        except BaseException:
            self.broken = True
            raise
        if msg["id"] == self._cid:
            chunk = msg.get("c")
            if chunk is not None:
                return chunk  # type: ignore[no-any-return]
            if "e" in msg:
                self.finished = True
                raise StopAsyncIteration
            if "err" in msg:
                self.finished = True  # an error reply ends the call cleanly
                raise _remote_error(msg)
        self.broken = True
        raise self._client._unexpected(msg, self._cid, self._method)


class _StreamOut:
    __slots__ = ("_args", "_chunks", "_client", "_conn", "_method", "_timeout")

    def __init__(
        self,
        client: IpcClient,
        method: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> None:
        self._client = client
        self._method = method
        self._args = args
        self._timeout = timeout
        self._conn: FramedProtocol | None = None
        self._chunks: _Chunks | None = None

    async def __aenter__(self) -> tuple[Any, AsyncIterator[bytes]]:
        client = self._client
        deadline = client._deadline(self._timeout)
        conn = await client._acquire(deadline)
        reusable = False
        try:
            cid = next(client._ids)
            reusable = True
            client._send_request(conn, cid, self._method, self._args, deadline, stream=False)
            reusable = False
            msg = await client._recv(conn, deadline, self._method)
            if msg["id"] == cid and "ok" in msg:
                if not msg.get("s", False):
                    reusable = True
                    self._chunks = _Chunks(client, None, cid, deadline, self._method)
                    return msg["ok"], self._chunks
                self._conn = conn
                self._chunks = _Chunks(client, conn, cid, deadline, self._method)
                return msg["ok"], self._chunks
            reusable = msg["id"] == cid and "err" in msg
            raise client._unexpected(msg, cid, self._method)
        finally:
            if self._conn is None:
                client._release(conn, reusable)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        chunks, conn = self._chunks, self._conn
        if chunks is not None:
            chunks.open = False
        if conn is not None and chunks is not None:
            self._conn = None
            self._client._release(conn, chunks.finished and not chunks.broken)
