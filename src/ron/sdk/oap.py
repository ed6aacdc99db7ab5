"""An asyncio OAP/1 client: HELLO, one-shot requests, and verified streamed GETs.

Wraps the sans-IO :class:`ron.proto.oap.ClientConnection` around one asyncio stream. Many
requests may be in flight on one connection at once; a reader task routes each reply
frame to the request waiting on its ``corr_id``.

TLS is the default (``tls://`` URLs, as ``ron up`` prints them): TLS 1.3, ALPN
``ron/1``, and the server certificate checked against the node's CA file (the development
CA is ``<data_dir>/tls/ca.crt``). ``tcp://`` is for nodes configured for plain TCP.

Errors are :class:`RonError` values: a server error frame becomes the error it carries
(``retry_after`` included); a lost connection or a failed verification is
``upstream_unavailable`` (502), the status a gateway gives a bad upstream answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import blake3

from ron.fsutil import fsync_dir, temp_name
from ron.proto.address import parse_address
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import (
    AppId,
    ClientConnection,
    Flags,
    HelloReply,
    OapLimits,
    ProtocolError,
    ResponseData,
    ResponseEnded,
    ResponseStarted,
    error_from_payload,
)

ALPN = "ron/1"
READ_SIZE = 256 * 1024
DEFAULT_TIMEOUT = 30.0


class OapIntegrityError(RonError):
    """The bytes received do not hash to the address asked for; nothing was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UPSTREAM_UNAVAILABLE, message)


def client_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN ``ron/1``, server verified against ``ca_file`` (else the
    system's trust store)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    return ctx


def parse_url(url: str) -> tuple[str, int, bool]:
    """``tls://host:port`` or ``tcp://host:port`` -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("tls", "tcp") or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r} is not tls://HOST:PORT or tcp://HOST:PORT")
    return parts.hostname, parts.port, parts.scheme == "tls"


@dataclass(frozen=True, slots=True)
class _Part:
    """One step of a reply: a chunk of payload, or its end with the final code."""

    payload: bytes
    end: bool = False
    code: int = 0


def _unavailable(message: str) -> RonError:
    return RonError(ErrorCode.UPSTREAM_UNAVAILABLE, message)


class OapClient:
    """One OAP/1 connection to a node's omnigate."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: OapLimits | None = None,
        cap: str | bytes | None = None,
    ) -> None:
        self.cap = cap.encode("ascii") if isinstance(cap, str) else (cap or b"")
        """The capability every request presents unless it passes its own."""
        self._reader = reader
        self._writer = writer
        self._conn = ClientConnection(limits)
        self._replies: dict[int, asyncio.Queue[_Part | RonError]] = {}
        self._hellos: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._held: dict[int, bytes] = {}
        self._failure: RonError | None = None
        self._next_hello = 1
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ca_file: Path | str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: OapLimits | None = None,
        cap: str | bytes | None = None,
    ) -> OapClient:
        """Connect (and for ``tls://``, handshake and check ALPN ``ron/1``).

        ``cap`` is the capability token for this connection's requests; without one,
        the local node's owner token when ``url`` is that node's (ron.localnode).
        """
        if cap is None:
            from ron.localnode import owner_token_for

            cap = owner_token_for(url)
        host, port, tls = parse_url(url)
        context = None
        if tls:
            context = ssl_context or client_context(ca_file)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if tls else None, limit=READ_SIZE
            )
        if tls:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
                writer.close()
                raise _unavailable("the server did not negotiate ALPN ron/1")
        return cls(reader, writer, limits, cap)

    async def __aenter__(self) -> OapClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # --- requests -------------------------------------------------------------------

    async def hello(
        self,
        *,
        tenant_id: int = 0,
        payload: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """The server's HELLO object (``max_frame``, ``max_inflight``, ...)."""
        self._check()
        corr_id = self._next_hello
        self._next_hello += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._hellos[corr_id] = future
        body = json.dumps(dict(payload)).encode() if payload is not None else b""
        try:
            self._writer.write(self._conn.hello(corr_id=corr_id, tenant_id=tenant_id, payload=body))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._hellos.pop(corr_id, None)

    async def request(
        self,
        app: int,
        payload: bytes | Mapping[str, Any],
        *,
        tenant_id: int = 0,
        cap: bytes = b"",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> bytes:
        """A one-shot request; returns the whole reply payload or raises its error."""
        parts = []
        async with asyncio.timeout(timeout):
            async for chunk in self.stream(app, payload, tenant_id=tenant_id, cap=cap):
                parts.append(chunk)
        return b"".join(parts)

    async def stream(
        self,
        app: int,
        payload: bytes | Mapping[str, Any],
        *,
        tenant_id: int = 0,
        cap: bytes = b"",
    ) -> AsyncIterator[bytes]:
        """A one-shot request whose reply payload is yielded frame by frame.

        An error frame, even after part of the reply, raises its :class:`RonError`.
        """
        self._check()
        body = payload if isinstance(payload, bytes) else json.dumps(dict(payload)).encode()
        corr_id, data = self._conn.start_request(
            app, body, tenant_id=tenant_id, cap=cap or self.cap
        )
        queue: asyncio.Queue[_Part | RonError] = asyncio.Queue()
        self._replies[corr_id] = queue
        try:
            self._writer.write(data)
            await self._writer.drain()
            while True:
                item = await queue.get()
                if isinstance(item, RonError):
                    raise item
                if item.end:
                    if item.code:
                        raise error_from_payload(item.code, item.payload)
                    if item.payload:
                        yield item.payload
                    return
                yield item.payload
        finally:
            self._replies.pop(corr_id, None)

    async def subscribe(
        self,
        topic: str,
        *,
        visibility_ms: int | None = None,
        max_unacked: int | None = None,
        tenant_id: int = 0,
        cap: bytes = b"",
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Mailbox messages pushed as they arrive (OAP-1 §13 ``subscribe``).

        Yields each message in the HTTP shape (``msg_id``, ``receipt``, ``payload_b64``,
        ...); ack them with a ``{"op": "ack"}`` request. Leaving the loop (``break``,
        ``aclose()``) sends ``REQ|END``, which ends the subscription on the server.
        """
        self._check()
        body: dict[str, Any] = {"op": "subscribe", "topic": topic}
        if visibility_ms is not None:
            body["visibility_ms"] = visibility_ms
        if max_unacked is not None:
            body["max_unacked"] = max_unacked
        corr_id, data = self._conn.start_request(
            AppId.MAILBOX,
            json.dumps(body).encode(),
            tenant_id=tenant_id,
            cap=cap or self.cap,
            end=False,
        )
        queue: asyncio.Queue[_Part | RonError] = asyncio.Queue()
        self._replies[corr_id] = queue
        ended = False
        try:
            self._writer.write(data)
            await self._writer.drain()
            opening = True
            while True:
                item = await queue.get()
                if isinstance(item, RonError):
                    raise item
                if item.end:
                    ended = True
                    if item.code:
                        raise error_from_payload(item.code, item.payload)
                    return
                if opening:  # RESP|START {"subscribed": topic}
                    opening = False
                    continue
                message: dict[str, Any] = json.loads(item.payload)
                yield message
        finally:
            self._replies.pop(corr_id, None)
            if not ended and self._failure is None:
                with contextlib.suppress(Exception):
                    self._writer.write(self._conn.send_data(corr_id, end=True))

    async def get(
        self,
        addr: str,
        dest: Path | str,
        *,
        tenant_id: int = 0,
        cap: bytes = b"",
        timeout: float = 300.0,
    ) -> int:
        """Storage GET of ``addr`` into ``dest``, verified; returns the byte count.

        The bytes go to a temporary sibling of ``dest`` while being hashed; only when the
        stream ended successfully *and* the BLAKE3 matches the address is it renamed to
        ``dest``. Otherwise it is removed and an error raised, so ``dest`` never holds
        unverified bytes.
        """
        expected = parse_address(addr).hex
        dest = Path(dest)
        tmp = temp_name(dest)
        hasher = blake3.blake3()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async with asyncio.timeout(timeout):
                    request = {"op": "get", "addr": addr}
                    async for chunk in self.stream(
                        AppId.STORAGE, request, tenant_id=tenant_id, cap=cap
                    ):
                        hasher.update(chunk)
                        f.write(chunk)
                        size += len(chunk)
                if hasher.hexdigest() != expected:
                    raise OapIntegrityError(f"received bytes do not hash to {addr}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(dest.parent)
        return size

    # --- reading --------------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _read_loop(self) -> None:
        failure = _unavailable("connection closed by the server")
        try:
            while data := await self._reader.read(READ_SIZE):
                for event in self._conn.receive_data(data):
                    self._route(event)
                if self._conn.closed:
                    break
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            failure = _unavailable(f"connection lost: {type(exc).__name__}")
        self._fail_all(failure)

    def _route(self, event: Any) -> None:
        if isinstance(event, ResponseData):
            if event.flags & Flags.END:  # its code comes with the ResponseEnded next
                self._held[event.corr_id] = event.payload
            else:
                self._deliver(event.corr_id, _Part(event.payload))
        elif isinstance(event, ResponseStarted):
            if event.end:
                self._held[event.corr_id] = event.payload
            else:
                self._deliver(event.corr_id, _Part(event.payload))
        elif isinstance(event, ResponseEnded):
            held = self._held.pop(event.corr_id, b"")
            self._deliver(event.corr_id, _Part(held, end=True, code=event.code))
        elif isinstance(event, HelloReply):
            future = self._hellos.get(event.corr_id)
            if future is not None and not future.done():
                if event.code:
                    future.set_exception(error_from_payload(event.code, b""))
                else:
                    future.set_result(dict(event.info))
        elif isinstance(event, ProtocolError):
            err = RonError(ErrorCode.UPSTREAM_UNAVAILABLE, f"server broke OAP/1: {event.error}")
            if event.fatal or event.corr_id is None:
                self._fail_all(err)
            else:
                self._deliver(event.corr_id, err)

    def _deliver(self, corr_id: int, item: _Part | RonError) -> None:
        queue = self._replies.get(corr_id)
        if queue is not None:
            queue.put_nowait(item)
        elif isinstance(item, _Part) and item.end and item.code:
            # A connection-level error (corr_id 0): every waiting request learns of it.
            self._fail_all(error_from_payload(item.code, item.payload))

    def _fail_all(self, err: RonError) -> None:
        if self._failure is None:
            self._failure = err
        for queue in self._replies.values():
            queue.put_nowait(err)
        for future in self._hellos.values():
            if not future.done():
                future.set_exception(err)
