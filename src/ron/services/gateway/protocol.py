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

Writes are coalesced per event-loop turn (:class:`CoalescingTransport`): uvicorn writes a
response's head and its body separately, and on loopback each ``send()`` syscall cost
about as much as the rest of a small GET's Python work, so one ``writev`` per turn does
the same job with one syscall and one TCP segment.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ron.proto.envelope import ErrorCode, envelope, new_corr_id
from ron.services.gateway.fastlane import FastLane

COALESCE_BYTES = 64 * 1024

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}


def guarded_protocol(
    *,
    max_header_bytes: int,
    header_timeout_s: float,
    on_reject: Any,
    fast_lane: FastLane | None = None,
) -> type[HttpToolsProtocol]:
    """A protocol class bound to these limits; ``on_reject(reason)`` counts refusals.

    ``fast_lane`` (see :mod:`ron.services.gateway.fastlane`) is asked first for each
    bodiless GET or HEAD of ``/o/...`` on a kept-alive HTTP/1.1 connection with nothing
    else in progress; when it answers, the response is written here and no ASGI cycle
    is made.
    """

    class GuardedProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _header_timer: asyncio.TimerHandle | None = None
        _in_headers = False
        _header_size = 0
        _answered = False  # the fast lane answered the request being parsed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
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
            if fast_lane is not None and self._fast_answer(fast_lane):
                return
            super().on_headers_complete()

        def _fast_answer(self, lane: FastLane) -> bool:
            url = self.url
            if not url.startswith(b"/o/") or b"?" in url or b"%" in url:
                return False
            if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
                return False  # answers must leave in request order
            parser = self.parser
            if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
                return False
            if parser.should_upgrade():
                return False
            method = parser.get_method().decode("ascii")
            reply = lane(method, url.decode("ascii"), self.headers, self.client)
            if reply is None:
                return False
            headers, lines, body = reply
            out = [STATUS_LINE[200]]
            for name, value in (*self.server_state.default_headers, *headers):
                out += (name, b": ", value, b"\r\n")
            out += (lines, b"\r\n", body)
            self.transport.write_now(b"".join(out))  # type: ignore[attr-defined]
            self._answered = True
            return True

        def on_message_complete(self) -> None:
            if self._answered:
                # What uvicorn does when a cycle's response completes: count it, arm
                # the keep-alive timer, start a pipelined request.
                self._answered = False
                self.on_response_complete()
                return
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Keep-alive: the next request's headers get their own deadline from their
            # first byte; idle time between requests is uvicorn's keep-alive timeout.
            self._in_headers = True
            self._header_bytes = 0

    return GuardedProtocol


class CoalescingTransport:
    """A transport whose small writes within one event-loop turn leave as one ``writev``.

    Bounded: a write that would take what is waiting past ``COALESCE_BYTES`` goes out at
    once together with it, so at most that much ever waits, and only until the end of the
    turn; large bodies therefore reach the real transport immediately and its flow
    control (pause/resume writing) works as before. ``close()`` sends what is waiting
    first; ``abort()`` drops it, as the real transport would.
    """

    __slots__ = ("_loop", "_pending", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        pending = self._pending
        if self._size + len(data) > COALESCE_BYTES:
            pending.append(data)
            self._flush()
            return
        if not pending:
            self._loop.call_soon(self._flush)
        pending.append(data)
        self._size += len(data)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` at once, after anything waiting (a complete response needs
        no company)."""
        self._pending.append(data)
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._size = 0
        if self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._size = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def __getattr__(self, name: str) -> Any:
        # pause_reading, resume_reading, get_extra_info, set_protocol...: the real thing.
        return getattr(self._transport, name)
