"""One OAP/1 connection: the thin asyncio layer around ``ron.proto.oap.ServerConnection``.

The codec turns bytes into events and keeps the stream rules; this class adds what
needs a clock or a socket: admission at START (503 inflight, 429 quota, 404 unknown
application), running each request's handler (inline first for ``eager`` applications,
in a task as soon as it waits), write coalescing and backpressure, the idle and write
timeouts, the ALPN check, and metrics. It is an ``asyncio.Protocol`` rather than
streams, because on uvloop callbacks cost a fraction of the streams machinery
(ARCHITECTURE, measurements).

Error handling follows OAP-1 §8.1. A fatal (framing) error cancels every request of the
connection, sends one error frame and closes. A stream error cancels the handler still
working on that corr_id (the error frame ends its reply) and the connection goes on.
Nothing a peer sends can raise out of :meth:`data_received`: the server keeps serving
every other connection.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Coroutine, Generator, Sequence
from typing import Any, cast

from ron.proto.envelope import ErrorCode, RonError, new_corr_id
from ron.proto.oap import (
    FIXED,
    STORAGE_CHUNK,
    Flags,
    Hello,
    LocalProtocolError,
    ProtocolError,
    RequestData,
    RequestEnded,
    RequestStarted,
    ServerConnection,
    one_shot_reply,
)
from ron.services.omnigate.apps import OapRequest
from ron.services.omnigate.gate import App, Gate
from ron.services.omnigate.tls import ALPN

log = logging.getLogger("ron.omnigate")

YIELD_EVERY = 16
"""Reply frames a handler may write back to back before it yields to other connections."""
DIRECT_WRITE = 16 * 1024
"""Frames at least this large are written at once instead of being coalesced."""
WRITE_BUFFER_HIGH = 256 * 1024
"""Transport write buffer above which handlers wait (``pause_writing``)."""
CLIENT_GONE = 499
"""Status recorded for requests cancelled because their connection went away."""


class _Nobody:
    """The target of a connection-level error frame: app 0, tenant 0, corr_id 0."""

    corr_id: int | None = None
    tenant_id: int | None = None
    app_proto_id: int | None = None


_NOBODY = _Nobody()


def rejection_reason(event: ProtocolError) -> str:
    """A fixed ``rejected_total`` reason for a protocol error (never its message)."""
    status = event.status
    if event.fatal:
        return "frame_too_large" if status == 413 else "malformed_frame"
    if status == 413:
        return "stream_too_large"
    if status == 429:
        return "too_many_streams"
    return "stream_violation"


class _Request:
    """An admitted request: collecting its frames (``parts``), then running (``task``)."""

    __slots__ = (
        "app",
        "cancel_status",
        "done",
        "holds_slot",
        "nbytes_in",
        "nbytes_out",
        "parts",
        "req",
        "started",
        "task",
    )

    def __init__(self, req: OapRequest, app: App) -> None:
        self.req = req
        self.app = app
        self.started = time.perf_counter()
        self.parts: list[bytes] | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_status = CLIENT_GONE
        self.done = False
        self.holds_slot = True
        self.nbytes_in = len(req.payload)
        self.nbytes_out = 0


class _Reply:
    """The :class:`~ron.services.omnigate.apps.Reply` of one request."""

    __slots__ = ("_proto", "_request", "_sent", "chunk_size", "ended")

    def __init__(self, proto: OapServerProtocol, request: _Request, chunk_size: int) -> None:
        self._proto = proto
        self._request = request
        self._sent = 0
        self.chunk_size = chunk_size
        self.ended = False

    async def send(self, chunk: bytes | memoryview) -> None:
        if self.ended:
            raise LocalProtocolError("the reply has already ended")
        proto = self._proto
        if len(chunk) < DIRECT_WRITE:
            proto.write(proto.conn.send_response(self._request.req, bytes(chunk), end=False))
        else:
            proto.write_parts((self._header(len(chunk)), chunk))
        self._request.nbytes_out += len(chunk)
        if proto.paused:
            await proto.wait_writable()
        else:
            self._sent += 1
            if self._sent % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def send_frames(self, data: bytes | memoryview) -> None:
        """Frames of ``chunk_size`` bytes (the last one shorter) for ``data``, handed to
        the transport together: one ``writev`` for a whole disk read instead of one per
        frame, and no payload byte copied."""
        if self.ended:
            raise LocalProtocolError("the reply has already ended")
        size = self.chunk_size
        if len(data) <= size:
            await self.send(data)
            return
        header = self._proto.conn.response_header
        req = self._request.req
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for offset in range(0, len(view), size):
            piece = view[offset : offset + size]
            parts += (header(req, len(piece)), piece)
        self._proto.write_parts(parts)
        self._request.nbytes_out += len(view)
        await self._after_write(len(parts) // 2)

    async def _after_write(self, frames: int) -> None:
        """Wait while the peer is not reading; else let other connections run now and
        then (every ``YIELD_EVERY`` frames)."""
        proto = self._proto
        if proto.paused:
            await proto.wait_writable()
            return
        before = self._sent
        self._sent += frames
        if before // YIELD_EVERY != self._sent // YIELD_EVERY:
            await asyncio.sleep(0)

    def _header(self, size: int) -> bytes:
        """The header of the next reply frame, for a payload of ``size`` bytes that is
        written after it as is (no join: a 64 KiB copy per storage chunk saved)."""
        if size > self.chunk_size:
            raise LocalProtocolError(f"a reply frame carries at most {self.chunk_size} bytes")
        return self._proto.conn.response_header(self._request.req, size)

    async def event(self, payload: bytes) -> None:
        if self.ended:
            raise LocalProtocolError("the reply has already ended")
        proto = self._proto
        flags = Flags.EVENT | Flags.ACK_REQ
        proto.write(proto.conn.send_response(self._request.req, payload, end=False, flags=flags))
        self._request.nbytes_out += len(payload)
        if proto.paused:
            await proto.wait_writable()

    def end(self, payload: bytes = b"") -> None:
        if self.ended:
            raise LocalProtocolError("the reply has already ended")
        self.ended = True
        self._proto.write(self._proto.conn.send_response(self._request.req, payload, end=True))
        self._request.nbytes_out += len(payload)


class _Resumed:
    """Awaitable that continues a coroutine already started outside any task."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        # Exactly what ``await`` does for a suspended coroutine: pass what it yielded to
        # the task, and what the task sends (or throws, e.g. CancelledError) back into it.
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration:
                    return


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _Resumed(coro, yielded)


def _settle(coro: Coroutine[Any, Any, None]) -> None:
    """Finish a handler whose task was cancelled before its first step.

    Such a task never ran :func:`_resume`, so the handler is still suspended where it
    first waited: deliver the cancellation to it there, so its cleanup (and the
    request's inflight slot) runs now rather than whenever it is garbage-collected.
    """
    if inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED:  # finished: the usual case
        return
    try:
        coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        return
    coro.close()  # it swallowed the cancellation and waited again: stop it for good


class OapServerProtocol(asyncio.Protocol):
    """Serves one client connection (TLS already terminated by the transport)."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self.conn = ServerConnection(gate.limits, gate.info)
        self._chunk = min(STORAGE_CHUNK, gate.limits.max_frame - FIXED)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._requests: dict[int, _Request] = {}
        self.paused = False
        self._writable: asyncio.Future[None] | None = None
        self._last = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] | None = None  # small frames waiting for _flush
        self._batching = False  # inside data_received: it flushes at its end
        self._open = False  # serving: set once accepted, cleared when closing
        self._counted = False  # counted in the connections gauge
        # Whether any application has a fast path, and so whether _serve_fast may help.
        self._fast = gate.guard is not None and any(
            app.fast_get is not None for app in gate.apps.values()
        )

    # --- transport callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        gate.handshaking.pop(self, None)
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if gate.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
                gate.reject("alpn")
                transport.abort()
                return
        self._transport = transport
        # Storage replies are 64 KiB frames: a deeper buffer means fewer pause/resume
        # round trips per stream, still a small, fixed amount of memory per connection.
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._open = True
        self._counted = True
        gate.connections.inc()
        gate.live.add(self)
        self._last = self._loop.time()
        self._idle = self._loop.call_later(gate.settings.idle_timeout_s, self._on_idle)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            return
        self._batching = True
        try:
            if self._fast and type(data) is bytes:  # slices of it become hashable keys
                served = self._serve_fast(data)
                if served:
                    if served == len(data):
                        return
                    data = data[served:]
            events = self.conn.receive_data(data)
            if events:  # bytes of an unfinished frame are not activity (slowloris)
                self._last = self._loop.time()
            for event in events:
                if isinstance(event, RequestStarted):
                    self._on_start(event)
                elif isinstance(event, RequestEnded):
                    self._on_end(event)
                elif isinstance(event, RequestData):
                    self._on_data(event)
                elif isinstance(event, Hello):
                    self._on_hello(event)
                elif isinstance(event, ProtocolError):
                    self._on_protocol_error(event)
                if not self._open:
                    return
        except Exception:
            # A bug of ours, not the peer's: lose this connection, never the server.
            log.exception("omnigate connection failed; closing it")
            self._gate.reject("internal")
            self._abort()
        finally:
            self._batching = False
            self._flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too; running handlers are cancelled below

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self._gate.handshaking.pop(self, None)
        if self._counted:
            self._counted = False
            self._gate.connections.dec()
            self._gate.live.discard(self)
        self._cancel_timers()
        for request in list(self._requests.values()):
            self._drop(request, CLIENT_GONE)
        self._requests.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("connection lost"))
            self._writable.exception()  # retrieved: nobody may be waiting any more
        self._transport = None

    def pause_writing(self) -> None:
        self.paused = True
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(
                self._gate.settings.write_timeout_s, self._on_write_timeout
            )

    def resume_writing(self) -> None:
        self.paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- output -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue a frame; small frames written in one loop iteration leave in one syscall.

        A storage reply for a small object is two frames, and pipelined requests produce
        several replies per read: deferring small writes to the end of the current
        ``data_received`` (or of the loop iteration, via ``call_soon``) halves the
        syscalls of the small-object path. Large frames flush
        everything queued before them and go out at once, so backpressure
        (``pause_writing``) is seen right after the write that caused it.
        """
        out = self._out
        if out is None:
            if len(data) >= DIRECT_WRITE:
                self._write_now(data)
                return
            self._out = [data]
            if not self._batching:  # data_received flushes when its batch is done
                self._loop.call_soon(self._flush)
        else:
            out.append(data)
            if len(data) >= DIRECT_WRITE:
                self._flush()

    def write_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write large frames as their parts, headers and payloads (one ``writev`` on
        uvloop, no join), after whatever small frames are queued."""
        self._flush()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.writelines(parts)

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out:
            self._write_now(out[0] if len(out) == 1 else b"".join(out))

    def _write_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def wait_writable(self) -> None:
        """Return once the transport drained below its high-water mark."""
        if not self.paused:
            return
        if self._transport is None:
            raise ConnectionResetError("connection lost")
        if self._writable is None:
            self._writable = self._loop.create_future()
        await asyncio.shield(self._writable)

    def _send_error(self, target: Any, err: RonError) -> None:
        self.write(self.conn.send_error(target, err, new_corr_id()))

    # --- the fast path ------------------------------------------------------------------

    def _serve_fast(self, data: bytes) -> int:
        """Answer the one-shot GETs at the start of ``data`` that need no decision;
        return how many bytes they took (the rest goes to the ordinary path).

        A small GET of a cached object is most of what omnigate serves, and through the
        ordinary path its events, request objects and handler coroutine cost more than
        the answer. Here a complete ``REQ|START|END`` frame that would only open and end
        a stream (:meth:`ServerConnection.one_shot`), from a capability already verified
        and still standing (:meth:`Gate.remembered`), for an answer the application has
        at hand (``App.fast_get``), admitted (:meth:`Gate.admit_now`), is answered on the
        spot with the very frames, metrics and quota charge of the ordinary path. The
        first frame for which any of that is not so, and all after it, are left to the
        ordinary path, which then decides everything as if this did not exist.
        """
        conn, gate = self.conn, self._gate
        apps = gate.apps
        chunk = self._chunk
        size = len(data)
        start = 0
        while start < size and not self.paused:
            started = time.perf_counter()
            shot = conn.one_shot(data, start)
            if shot is None:
                break
            end, app_id, tenant, corr_id, cap, payload = shot
            app = apps.get(app_id)
            if app is None or app.fast_get is None:
                break
            grant = gate.remembered(cap)
            if grant is None:
                break
            body = app.fast_get(payload, grant)
            if body is None or len(body) > chunk or not gate.admit_now(app_id, grant.tenant):
                break
            head, tail = one_shot_reply(app_id, tenant, corr_id, len(body))
            if len(body) < DIRECT_WRITE:
                self.write(head + body + tail if body else tail)
            else:
                self.write_parts((head, body))
                self.write(tail)
            gate.record(app.name, "get", 200, started, len(payload), len(body))
            gate.fast_answers += 1
            start = end
        if start:
            self._last = self._loop.time()
        return start

    # --- events -----------------------------------------------------------------------

    def _on_hello(self, event: Hello) -> None:
        started = time.perf_counter()
        self.conn.info = self._gate.hello_info()
        self.write(self.conn.send_hello(event))
        self._gate.record("hello", "hello", 200, started, len(event.payload), 0)

    def _on_start(self, event: RequestStarted) -> None:
        gate = self._gate
        app = gate.apps.get(event.app_proto_id)
        if app is None:
            started = time.perf_counter()
            err = RonError(
                ErrorCode.NOT_FOUND, f"no application 0x{event.app_proto_id:04x} on this node"
            )
            self._send_error(event, err)
            gate.record("unknown", "-", err.status, started, len(event.payload), 0)
            return
        try:
            grant = gate.authenticate(event.cap)
        except RonError as err:
            self._send_error(event, err)
            gate.record(app.name, "-", err.status, time.perf_counter(), 0, 0)
            return
        tenant = event.tenant_id if grant is None else grant.tenant
        refusal = gate.admit(app, event.app_proto_id, tenant)
        if refusal is not None:
            self._send_error(event, refusal)
            gate.record(app.name, "-", refusal.status, time.perf_counter(), 0, 0)
            return
        req = OapRequest(
            event.corr_id, event.app_proto_id, event.tenant_id, event.cap, event.payload, grant
        )
        request = _Request(req, app)
        self._requests[event.corr_id] = request
        if event.end:
            self._dispatch(request)
        elif app.long_lived is not None and app.long_lived(event.payload):
            # A subscription: it runs from its START until the client's END (or the
            # connection) ends it. It gives its in-flight slot back at once: it waits far
            # more than it works, and the mailbox bounds how many may wait.
            req.closed = asyncio.Event()
            request.holds_slot = False
            gate.release()
            self._dispatch(request)
        else:
            request.parts = [event.payload]

    def _on_data(self, event: RequestData) -> None:
        request = self._requests.get(event.corr_id)
        if request is not None and request.parts is not None:
            request.parts.append(event.payload)
            request.nbytes_in += len(event.payload)

    def _on_end(self, event: RequestEnded) -> None:
        request = self._requests.get(event.corr_id)
        if request is not None and request.req.closed is not None:
            request.req.closed.set()  # the client cancels its subscription
            return
        if request is not None and request.parts is not None:
            request.req.payload = b"".join(request.parts)
            request.parts = None
            self._dispatch(request)

    def _on_protocol_error(self, event: ProtocolError) -> None:
        self._gate.reject(rejection_reason(event))
        if event.fatal:
            for request in list(self._requests.values()):
                self._drop(request, event.status)
            self._requests.clear()
            self._send_error(event, event.error)
            self._close()
            return
        if event.corr_id is not None:
            victim = self._requests.pop(event.corr_id, None)
            if victim is not None:
                self._drop(victim, event.status)
        self._send_error(event, event.error)

    # --- requests ---------------------------------------------------------------------

    def _dispatch(self, request: _Request) -> None:
        """Run the handler; an ``eager`` application starts right here, without a task.

        A small storage GET never really waits (the object is read from the page cache
        and the reply fits the transport buffer), so starting it inline saves a task and
        a loop iteration per request. Only when the handler first suspends does it move
        into a task, which resumes it exactly where it stopped (:func:`_resume`).
        """
        coro = self._run(request)
        if not request.app.eager:
            request.task = self._loop.create_task(coro)
            return
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        task = self._loop.create_task(_resume(coro, yielded))
        task.add_done_callback(lambda _: _settle(coro))
        request.task = task

    async def _run(self, request: _Request) -> None:
        reply = _Reply(self, request, self._chunk)
        status = 200
        try:
            await request.app.handler(request.req, reply)
            if not reply.ended:
                raise RonError(ErrorCode.INTERNAL, "the application sent no reply")
        except asyncio.CancelledError:
            status = request.cancel_status
            raise
        except RonError as exc:
            status = exc.status
            self._fail(request, reply, exc)
        except ConnectionError:
            status = CLIENT_GONE
        except Exception:
            log.exception(
                "omnigate handler failed",
                extra={"app": request.app.name, "corr_id": request.req.corr_id},
            )
            status = 500
            self._fail(request, reply, RonError(ErrorCode.INTERNAL, "internal error"))
        finally:
            self._finish(request, status)

    def _fail(self, request: _Request, reply: _Reply, err: RonError) -> None:
        if reply.ended or request.done:
            log.error("omnigate handler failed after its reply ended", extra={"err": repr(err)})
            return
        reply.ended = True
        self._send_error(request.req, err)

    def _finish(self, request: _Request, status: int) -> None:
        if request.done:
            return
        request.done = True
        if self._requests.get(request.req.corr_id) is request:
            del self._requests[request.req.corr_id]
        if request.holds_slot:
            self._gate.release()
        self._gate.record(
            request.app.name,
            request.req.op,
            status,
            request.started,
            request.nbytes_in,
            request.nbytes_out,
        )
        self._last = self._loop.time()

    def _drop(self, request: _Request, status: int) -> None:
        """Abandon a request whose stream was ended by an error or by the connection."""
        if request.task is not None and not request.task.done():
            request.cancel_status = status
            request.task.cancel()  # its ``finally`` releases the slot and records it
        else:
            self._finish(request, status)

    # --- timeouts and closing -----------------------------------------------------------

    def _on_idle(self) -> None:
        self._idle = None
        if not self._open:
            return
        timeout = self._gate.settings.idle_timeout_s
        if any(r.task is not None for r in self._requests.values()):
            self._idle = self._loop.call_later(timeout, self._on_idle)
            return
        quiet = self._loop.time() - self._last
        if quiet < timeout:
            self._idle = self._loop.call_later(timeout - quiet, self._on_idle)
            return
        self._gate.reject("idle_timeout")
        for request in list(self._requests.values()):
            self._drop(request, 408)
        self._requests.clear()
        self._send_error(_NOBODY, RonError(ErrorCode.TIMEOUT, "idle timeout"))
        self._close()

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        self._gate.reject("write_timeout")
        self._abort()

    def _cancel_timers(self) -> None:
        for handle in (self._idle, self._write_timer):
            if handle is not None:
                handle.cancel()
        self._idle = self._write_timer = None

    def drop_pending(self) -> None:
        """The service is stopping: refuse requests still waiting for their END."""
        for request in list(self._requests.values()):
            if request.task is None:
                del self._requests[request.req.corr_id]
                self._drop(request, 503)
                self._send_error(request.req, RonError(ErrorCode.UNAVAILABLE, "shutting down"))

    def shutdown(self) -> None:
        """The service is stopping: cancel what still runs and close."""
        for request in list(self._requests.values()):
            self._drop(request, 503)
        self._requests.clear()
        self._close()

    def _close(self) -> None:
        """Flush what is queued (the error frame), then close."""
        self._open = False
        self._cancel_timers()
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self._open = False
        self._cancel_timers()
        if self._transport is not None:
            self._transport.abort()
