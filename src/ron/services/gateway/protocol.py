"""uvicorn's httptools protocol with the limits a public endpoint needs before the app runs.

Three kinds of request never reach the ASGI app, so they must be answered here:
- header floods: the request line plus headers may not exceed ``max_header_bytes``
  (431, then close), counted as they arrive, so memory stays bounded by one read;
- slow-loris on headers: a request whose headers are not complete within
  ``header_timeout_s`` of its first byte (or of the connection) gets 408 and is closed;
- requests the HTTP parser refuses (raw non-ASCII bytes in the target, a negative
  Content-Length, Content-Length with Transfer-Encoding): 400, closed, answered with the
  error envelope like every other error instead of uvicorn's plain-text body.
A slow client costs a socket and a timer, never a worker: the loop serves others.

And one cost: uvicorn writes a response's head and its body with two ``write`` calls,
which on a socket with TCP_NODELAY are two syscalls and two segments (and often two
wake-ups of the client) for one small response. :class:`HeldWrites` holds a small
write until the next one, so head and body leave in one ``writev``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ron.proto.envelope import ErrorCode, envelope, new_corr_id

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}


# Writes up to this size may be held back to join the next one; larger ones go at once.
_HOLD_MAX = 16 * 1024


class HeldWrites:
    """A transport that holds one small write until the next write, a close, or the end
    of the current loop iteration, whichever comes first.

    Bytes leave in the order they were written, at most one loop iteration later; a
    head followed at once by its body (every complete response) becomes one
    ``writelines`` (one ``writev`` on uvloop). Everything else is the transport's own.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif type(data) is bytes and len(data) <= _HOLD_MAX:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(
    *, max_header_bytes: int, header_timeout_s: float, on_reject: Any
) -> type[HttpToolsProtocol]:
    """A protocol class bound to these limits; ``on_reject(reason)`` counts refusals."""

    class GuardedProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _header_timer: asyncio.TimerHandle | None = None
        _in_headers = False
        _header_size = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            held = HeldWrites(transport, self.loop)
            super().connection_made(held)  # type: ignore[arg-type]
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._in_headers = True
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._in_headers and not self.transport.is_closing():
                on_reject("header_timeout")
                self._refuse(408, ErrorCode.TIMEOUT, "request headers not received in time")

        def _refuse(self, status: int, code: ErrorCode, message: str) -> None:
            corr = new_corr_id()
            body = json.dumps(envelope(code, message, corr)).encode()
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nx-corr-id: %s\r\nconnection: close\r\n\r\n"
                % (status, _REASONS[status], len(body), corr.encode())
            )
            self.transport.write(head + body)
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to a request its parser refused; ours is the envelope.
            self._refuse(400, ErrorCode.BAD_REQUEST, "malformed HTTP request")

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._in_headers and self._header_timer is None:
                self._arm()  # first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self._in_headers and not self.transport.is_closing():
                # Headers still incomplete after this read: httptools buffers partial
                # header values itself, so bound what it may hold by the raw byte count.
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    on_reject("headers_too_large")
                    self._refuse(431, ErrorCode.HEADERS_TOO_LARGE, "request headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_size = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._header_size += n
            if self._header_size > max_header_bytes and not self.transport.is_closing():
                on_reject("headers_too_large")
                self._refuse(431, ErrorCode.HEADERS_TOO_LARGE, "request headers too large")

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            if self.transport.is_closing():
                return
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Keep-alive: the next request's headers get their own deadline from their
            # first byte; idle time between requests is uvicorn's keep-alive timeout.
            self._in_headers = True
            self._header_bytes = 0

    return GuardedProtocol
