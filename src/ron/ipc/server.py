"""The service side of the IPC transport: handlers served on a Unix domain socket.

Design (normative details in docs/specs/IPC.md):

* One call at a time per connection, like HTTP/1.1. Concurrency comes from the client's
  connection pool, so the socket itself is the backpressure for streams and there is no
  multiplexing state to get wrong.
* Admission is bounded by ``max_inflight`` across all connections and never queues: a
  call that finds the server full is answered ``unavailable`` (retryable) at once, so an
  overloaded service sheds load instead of piling up work nobody will wait for.
* Every call carries its remaining budget (``dl``); the handler runs under
  ``asyncio.timeout_at`` and is cancelled at the deadline (``timeout``).
* Faults stay local: a handler exception becomes an ``internal`` reply, a malformed or
  oversized frame gets one error reply and closes that connection only. The service
  process never dies because of what a peer sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ron.ipc._conn import ConnectionLost, FramedProtocol, pieces
from ron.ipc.framing import MAX_FRAME, BytesLike, FrameError, encode, encode_end
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["CallContext", "Handler", "IpcServer", "StreamReply"]

log = logging.getLogger("ron.ipc")

_MAX_MESSAGE: Final = 2048  # error messages are for humans and logs, not payloads


@dataclass(slots=True)
class CallContext:
    """What a handler knows about the call besides its arguments.

    ``deadline`` is in event-loop time (``loop.time()``); pass :meth:`remaining` as the
    ``timeout`` of any downstream call so the budget shrinks along the chain instead of
    restarting at every hop. ``body`` is set only for calls with a streamed request body
    and is valid only until the handler returns.
    """

    corr_id: int
    deadline: float
    body: AsyncIterator[bytes] | None = None
    method: str = ""

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


@dataclass(slots=True)
class StreamReply:
    """Return this from a handler to stream the reply: ``meta`` first, then ``chunks``.

    Chunks are sent as they are produced and only as fast as the caller reads them; an
    async generator is closed (``aclose``) when the stream ends or fails, so file handles
    it holds are released promptly.
    """

    meta: Any
    chunks: AsyncIterable[BytesLike]


Handler = Callable[[dict[str, Any], CallContext], Awaitable[Any]]


class _Body:
    """``ctx.body``: the request's chunks, read off the connection as the handler asks."""

    __slots__ = ("_cid", "_conn", "broken", "done")

    def __init__(self, conn: FramedProtocol, cid: int) -> None:
        self._conn = conn
        self._cid = cid
        self.done = False
        self.broken = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        return await self.next()

    async def next(self, deadline: float | None = None) -> bytes:
        if self.done:
            raise StopAsyncIteration
        if self.broken:
            raise RonError(ErrorCode.BAD_REQUEST, "request body is broken")
        try:
            msg = await self._conn.recv(deadline)
        except FrameError:
            self.broken = True
            raise
        except ConnectionLost:
            self.broken = True
            raise RonError(
                ErrorCode.BAD_REQUEST, "request body incomplete: connection closed"
            ) from None
        if msg["id"] == self._cid:
            chunk = msg.get("c")
            if chunk is not None:
                return chunk  # type: ignore[no-any-return]
            if "e" in msg:
                self.done = True
                raise StopAsyncIteration
        self.broken = True
        raise RonError(
            ErrorCode.BAD_REQUEST,
            f"protocol error: expected body chunk or end for call {self._cid}",
        )


def _error_payload(err: RonError, *, with_extra: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "code": err.code.value,
        "message": err.message[:_MAX_MESSAGE],
        "retryable": err.retryable,
    }
    if err.retry_after is not None:
        payload["retry_after"] = float(err.retry_after)
    if with_extra and err.extra:
        payload["extra"] = err.extra
    return payload


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse to touch anything else.

    Why probe: a crashed service leaves its socket file behind and must be able to
    restart, but two live instances on one path would silently split the traffic.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except BlockingIOError:
        pass  # a live listener with a full backlog
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)


class IpcServer:
    """Serves ``handlers`` (method name -> async handler) to IPC clients.

    The mapping is copied at construction: the set of methods is part of the service's
    interface, not something that changes under running calls.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        name: str = "ipc",
        max_frame: int = MAX_FRAME,
        max_inflight: int = 256,
        max_connections: int = 1024,
        max_deadline: float = 3600.0,
        drain_timeout: float = 5.0,
    ) -> None:
        if max_inflight < 1 or max_connections < 1:
            raise ValueError("max_inflight and max_connections must be positive")
        self.name = name
        self._handlers: dict[str, Handler] = dict(handlers)
        self._max_frame = max_frame
        self._max_inflight = max_inflight
        self._max_connections = max_connections
        self._max_deadline = max_deadline
        self._drain_timeout = drain_timeout
        self._inflight = 0
        self._conns: dict[FramedProtocol, asyncio.Task[None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._inode: int | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._log_extra = {"ipc_server": name}

    # ---- public ------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """The socket path once started, else None."""
        return self._path

    @property
    def inflight(self) -> int:
        """Calls currently admitted (running a handler)."""
        return self._inflight

    async def start_unix(self, path: str) -> None:
        """Listen on ``path`` (mode 0600), replacing a stale socket file left by a crash.

        The socket is bound and chmod-ed before ``listen()``: connecting needs a
        listening socket, so there is no window in which the umask's permissions apply.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: FramedProtocol(self._max_frame, self._on_connection),
                sock=sock,
                backlog=512,
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._path = path
        self._inode = os.stat(path).st_ino

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish (up to the drain timeout), close.

        Idle connections are closed at once; busy ones after their current call. Calls
        still running at the drain deadline are cancelled. The socket file is removed if
        it is still ours.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._close(drain_timeout)
        finally:
            self._closed.set_result(None)

    async def _close(self, drain_timeout: float | None) -> None:
        self._closing = True
        timeout = self._drain_timeout if drain_timeout is None else drain_timeout
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.idle:
                conn.close()
        tasks = list(self._conns.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "ipc server cancelled %d calls at the drain deadline",
                    len(pending),
                    extra=self._log_extra,
                )
                await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self._conns):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self._path is not None:
            with contextlib.suppress(OSError):
                if os.stat(self._path).st_ino == self._inode:
                    os.unlink(self._path)

    # ---- connections -------------------------------------------------------------

    def _on_connection(self, conn: FramedProtocol) -> None:
        if self._closing:
            conn.abort()
            return
        if len(self._conns) >= self._max_connections:
            self._reply_error(
                conn, 0, RonError(ErrorCode.UNAVAILABLE, f"{self.name}: too many connections")
            )
            conn.close()
            return
        self._conns[conn] = asyncio.get_running_loop().create_task(self._serve(conn))

    async def _serve(self, conn: FramedProtocol) -> None:
        try:
            while not self._closing:
                conn.idle = True
                try:
                    msg = await conn.recv()
                except FrameError as exc:
                    log.warning("ipc bad frame: %s", exc.message, extra=self._log_extra)
                    self._reply_error(conn, 0, exc)
                    return
                except ConnectionLost:
                    return
                conn.idle = False
                if self._closing:
                    return
                if "m" not in msg:
                    self._reply_error(
                        conn,
                        msg["id"],
                        RonError(ErrorCode.BAD_REQUEST, "protocol error: expected a request"),
                    )
                    return
                if not await self._call(conn, msg):
                    return
        except Exception:  # a bug here must cost one connection, not the service
            log.exception("ipc connection failed", extra=self._log_extra)
        finally:
            conn.close()
            self._conns.pop(conn, None)

    async def _call(self, conn: FramedProtocol, msg: dict[str, Any]) -> bool:
        """Run one call; True if the connection is still in a clean state for the next."""
        cid: int = msg["id"]
        method: str = msg["m"]
        budget = min(float(msg["dl"]), self._max_deadline)
        deadline = asyncio.get_running_loop().time() + budget
        body = _Body(conn, cid) if msg.get("s", False) else None
        handler = self._handlers.get(method)
        if handler is None:
            keep = self._reply_error(
                conn, cid, RonError(ErrorCode.BAD_REQUEST, f"unknown method {method}")
            )
        elif budget <= 0:
            keep = self._reply_error(
                conn, cid, RonError(ErrorCode.TIMEOUT, f"{method}: deadline already passed")
            )
        elif self._inflight >= self._max_inflight:
            keep = self._reply_error(
                conn,
                cid,
                RonError(
                    ErrorCode.UNAVAILABLE,
                    f"{self.name} busy: {self._inflight} calls in flight",
                ),
            )
        else:
            ctx = CallContext(corr_id=cid, deadline=deadline, body=body, method=method)
            self._inflight += 1
            try:
                keep = await self._run(conn, handler, msg["a"], ctx)
            finally:
                self._inflight -= 1
        if body is not None and not body.done:
            # The reply went out before the body was read to its end. Skip the rest so
            # the connection can carry the next call (a client that gave up on the
            # upload closes the connection instead, which ends this at once).
            keep = keep and not body.broken and await self._discard_body(body, deadline)
        return keep

    async def _run(
        self, conn: FramedProtocol, handler: Handler, args: dict[str, Any], ctx: CallContext
    ) -> bool:
        if conn.peer_closed:
            return False  # the caller gave up before we started: nobody to answer
        task = asyncio.current_task()
        assert task is not None
        # A caller that drops the connection (its own deadline, cancellation) no longer
        # waits for the answer: cancel the handler rather than let it hold a slot.
        conn.on_lost = task.cancel
        try:
            return await self._run_handler(conn, handler, args, ctx)
        finally:
            conn.on_lost = None

    async def _run_handler(
        self, conn: FramedProtocol, handler: Handler, args: dict[str, Any], ctx: CallContext
    ) -> bool:
        cid = ctx.corr_id
        err: RonError
        scope = asyncio.timeout_at(ctx.deadline)
        try:
            async with scope:
                result = await handler(args, ctx)
                if isinstance(result, StreamReply):
                    await self._stream(conn, cid, result)
                    return True
            try:
                frame = encode({"id": cid, "ok": result}, self._max_frame)
            except FrameError as exc:
                raise _ReplyError(f"{ctx.method}: reply too large ({exc.message})") from exc
            except Exception as exc:
                raise _ReplyError(f"{ctx.method}: reply not encodable") from exc
            conn.send(frame)
            return True
        except ConnectionLost:
            return False
        except _ReplyError as exc:
            err = exc
            log.error(
                "ipc reply of %s failed: %s",
                ctx.method,
                exc.message,
                exc_info=exc.__cause__,
                extra={**self._log_extra, "ipc_id": cid},
            )
        except RonError as exc:
            err = exc
            log.debug(
                "ipc call %s failed: %s",
                ctx.method,
                exc.code.value,
                extra={**self._log_extra, "ipc_id": cid},
            )
        except TimeoutError:
            if scope.expired():
                err = RonError(ErrorCode.TIMEOUT, f"{ctx.method} exceeded its deadline")
            else:
                err = self._internal(ctx)
        except Exception:
            err = self._internal(ctx)
        return self._reply_error(conn, cid, err)

    def _internal(self, ctx: CallContext) -> RonError:
        log.exception(
            "ipc handler %s crashed",
            ctx.method,
            extra={**self._log_extra, "ipc_id": ctx.corr_id, "ipc_method": ctx.method},
        )
        return RonError(ErrorCode.INTERNAL, f"internal error in {ctx.method}")

    async def _stream(self, conn: FramedProtocol, cid: int, reply: StreamReply) -> None:
        try:
            try:
                head = encode({"id": cid, "ok": reply.meta, "s": True}, self._max_frame)
            except Exception as exc:
                raise _ReplyError("stream metadata not encodable") from exc
            conn.send(head)
            async for chunk in reply.chunks:
                if not chunk:
                    continue
                for piece in pieces(chunk):
                    conn.send_chunk(cid, piece)
                    if conn.writing_paused:
                        await conn.drain()
            conn.send(encode_end(cid))
        finally:
            aclose = getattr(reply.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _discard_body(self, body: _Body, deadline: float) -> bool:
        try:
            while True:
                await body.next(deadline)
        except StopAsyncIteration:
            return True
        except (RonError, TimeoutError):
            return False

    def _reply_error(self, conn: FramedProtocol, cid: int, err: RonError) -> bool:
        """Send an error reply; False if the connection is gone."""
        try:
            frame = encode({"id": cid, "err": _error_payload(err)}, self._max_frame)
        except Exception:  # unencodable or huge ``extra``: the code still goes through
            frame = encode({"id": cid, "err": _error_payload(err, with_extra=False)})
        try:
            conn.send(frame)
        except ConnectionLost:
            return False
        return True


class _ReplyError(RonError):
    """The handler succeeded but its reply cannot be sent: the service's bug (internal)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)
