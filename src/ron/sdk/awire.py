""":mod:`ron.sdk.wire` for asyncio: small calls on kept-alive HTTP/1.1 connections.

``AsyncClient`` sends the same calls here as ``Client`` sends on ``wire`` (a body of
bytes or none, an answer read whole), for the same reason: httpx's request machinery
costs the client about as much time per mailbox call as the node takes to answer it.
The messages are framed and parsed by h11 (which httpx uses underneath too), on
asyncio streams; streams, custom transports and proxied URLs stay on httpx.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

import h11

from ron.sdk.wire import MAX_IDLE, Endpoint, LocalRequestError, WireReply, again

__all__ = ["AsyncWirePool"]

READ_SIZE = 64 * 1024


class _Conn:
    """One connection and its HTTP/1.1 state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        """Idle and not closed by the node while it waited (its keep-alive timeout)."""
        return (
            self.h11.our_state is h11.IDLE
            and not self.reader.at_eof()
            and not self.writer.transport.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


def _framed(
    conn: h11.Connection,
    method: str,
    target: str,
    head: list[tuple[str, str]],
    content: bytes | None,
) -> bytes:
    """The request's bytes, head and body together (one write, one segment)."""
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=head)) or b""
    except h11.LocalProtocolError as exc:
        raise LocalRequestError(str(exc)) from None
    if content:
        out += conn.send(h11.Data(data=content)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


class AsyncWirePool:
    """Kept-alive connections to one node, for the event loop that uses the client."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._at = Endpoint(base_url)
        self._context = self._at.tls(ssl_context)
        self._idle: list[_Conn] = []
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
        params: Mapping[str, str] | None = None,
    ) -> WireReply:
        """Send one request and read its whole answer (errors as ``WirePool.request``,
        plus ``h11.RemoteProtocolError`` for an answer that is not HTTP/1.1)."""
        target = self._at.target(path, params)
        fields = dict(headers)
        head = [("host", self._at.authority), *fields.items()]
        if content is not None and "content-length" not in {k.lower() for k in fields}:
            head.append(("content-length", str(len(content))))
        async with asyncio.timeout(timeout):
            conn, reused = await self._take()
            while True:
                sent = False
                try:
                    conn.writer.write(_framed(conn.h11, method, target, head, content))
                    await conn.writer.drain()
                    sent = True
                    status, names, body = await self._answer(conn)
                    break
                except BaseException as exc:
                    conn.close()
                    if not (reused and again(exc, sent, method, fields)):
                        raise
                conn, reused = await self._open(), False
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._give(conn)
        else:
            conn.close()
        return WireReply(status, names, body)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _answer(self, conn: _Conn) -> tuple[int, dict[str, str], bytes]:
        status = 0
        names: dict[str, str] = {}
        parts: list[bytes] = []
        got_any = False
        while True:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                chunk = await conn.reader.read(READ_SIZE)
                if not chunk and not got_any:
                    # Closed with no answer at all (as http.client's RemoteDisconnected).
                    raise ConnectionResetError("the node closed the connection unanswered")
                got_any = True
                conn.h11.receive_data(chunk)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                for raw_name, raw_value in event.headers:
                    key = raw_name.decode("latin-1")  # h11 gives names lower-cased
                    value = raw_value.decode("latin-1")
                    names[key] = f"{names[key]}, {value}" if key in names else value
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, names, b"".join(parts)
            else:  # ConnectionClosed mid-answer, or PAUSED
                raise ConnectionResetError("the node closed the connection mid-answer")

    async def _take(self) -> tuple[_Conn, bool]:
        if self._closed:
            raise ConnectionError("the client is closed")
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        return await self._open(), False

    async def _open(self) -> _Conn:
        at = self._at
        if at.https:
            reader, writer = await asyncio.open_connection(
                at.host, at.port, ssl=self._context, server_hostname=at.host
            )
        else:
            reader, writer = await asyncio.open_connection(at.host, at.port)
        return _Conn(reader, writer)

    def _give(self, conn: _Conn) -> None:
        if not self._closed and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
