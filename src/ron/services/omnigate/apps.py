"""The applications omnigate serves over OAP/1, behind one small calling convention.

An application is ``async def handler(request, reply)``: it reads the whole request
(``request.payload``, already decompressed and reassembled from its frames), then either
streams its answer through ``reply`` or raises :class:`RonError`, which becomes the
error frame of its stream, even after part of a streamed reply went out (OAP-1 §11).
The connection code owns framing, admission, budgets and metrics; an application never
sees a socket.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ron.auth.guard import Guard
from ron.auth.verifier import Grant
from ron.proto.address import Address, parse_address
from ron.proto.envelope import ErrorCode, RonError
from ron.services.overlay.reader import STREAM_CHUNK, ContentReader, ObjectInfo
from ron.services.storage.store import iter_file

KNOWN_OPS = frozenset({"get", "send", "recv", "ack", "nack", "delete", "subscribe"})
"""Ops that may appear as the ``method`` label of ``requests_total`` (bounded set)."""
PARSE_CACHE = 4096
TARGET_PAYLOAD = 1024
"""Request payloads up to this size have their parsed target remembered."""


@dataclass(slots=True)
class OapRequest:
    """One complete request as an application sees it.

    ``cap`` is the capability presented on START (a bearer secret: never log it); the
    connection authenticated it before the request got here, and the application
    authorizes it once it knows what the request asks for.
    ``op`` is set by the application once it has parsed the payload; it only labels
    metrics.
    """

    corr_id: int
    app_proto_id: int
    tenant_id: int
    cap: bytes
    payload: bytes
    grant: Grant | None = None
    """The verified capability (None on a node that does not enforce them)."""
    op: str = "-"
    closed: asyncio.Event | None = None
    """For a long-lived request (dispatched at START): set when the client sends END."""


class Reply(Protocol):
    """The reply direction of one stream."""

    @property
    def chunk_size(self) -> int:
        """The most payload bytes one reply frame should carry (64 KiB by default)."""
        ...

    async def send(self, chunk: bytes | memoryview) -> None:
        """One more reply frame (``RESP|START`` first, then ``RESP``); waits while the
        peer is not reading, so a slow client throttles the handler, not our memory."""
        ...

    async def send_frames(self, data: bytes | memoryview) -> None:
        """As many reply frames as ``data`` needs at ``chunk_size`` bytes each, written
        together (large reads: fewer writes, no copies); waits as :meth:`send` does."""
        ...

    def end(self, payload: bytes = b"") -> None:
        """The final ``RESP|END`` (code 0); for a streamed reply the payload is empty."""
        ...

    async def event(self, payload: bytes) -> None:
        """One pushed item, ``RESP|EVENT|ACK_REQ`` (after the reply's ``RESP|START``)."""
        ...


AppHandler = Callable[[OapRequest, Reply], Awaitable[None]]


def json_request(request: OapRequest) -> dict[str, Any]:
    """The payload as a JSON object, and its ``op`` recorded on the request."""
    try:
        # Decoding first skips json's byte-encoding sniffing: this runs on every request.
        body = json.loads(request.payload.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: a client's fault
        raise RonError(ErrorCode.BAD_REQUEST, "request payload is not JSON") from None
    if not isinstance(body, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "request payload must be a JSON object")
    op = body.get("op")
    request.op = op if isinstance(op, str) and op in KNOWN_OPS else "other"
    return body


class StorageApp:
    """Storage GET (app 0x0301): verified object bytes, by address or by tiles path.

    Bytes by address come from the overlay's :class:`ContentReader`, under the same rule
    as the HTTP gateway: nothing unverified is sent, and a corrupted object is never
    delivered complete (the reader holds the last chunk back until the hash matched;
    a mismatch ends the stream with an error frame instead of ``RESP|END``).
    """

    def __init__(
        self,
        reader: ContentReader,
        tiles_root: Callable[[], Path | None],
        guard: Guard | None = None,
    ) -> None:
        self._guard = guard
        self._reader = reader
        self._tiles_root = tiles_root
        self._parsed: dict[str, Address] = {}
        self._targets: dict[bytes, tuple[str | None, str | None]] = {}

    async def __call__(self, request: OapRequest, reply: Reply) -> None:
        addr, path = self._target(request)
        if addr is not None:
            if self._guard is not None:
                self._guard.authorize(request.grant, method="GET", path=f"/o/{addr}", addr=addr)
            await self._by_address(addr, reply, request.grant is not None)
        else:
            assert path is not None
            if self._guard is not None:
                self._guard.authorize(request.grant, method="GET", path=path)
            await self._by_path(path, reply)

    def fast_get(self, payload: bytes, grant: Grant) -> bytes | None:
        """The payload of a GET by address whose answer is certain and in memory: a
        request already seen and parsed (same bytes), its address resolved lately, the
        grant allowing it, a public small object whose verified bytes are kept and
        whose file is unchanged. None otherwise: :meth:`__call__` then answers,
        refusals and errors included, so nothing here raises or counts.
        """
        known = self._targets.get(payload)
        if known is None or known[0] is None:
            return None  # not seen yet, or a tiles path
        text = known[0]
        addr = self._parsed.get(text)
        if addr is None:
            return None
        if self._guard is not None and not grant.allows(method="GET", path=f"/o/{text}", addr=text):
            return None
        reader = self._reader
        info = reader.cached_info(addr)
        if info is None or info.private or not reader.is_small(info):
            return None
        return reader.cached_small(info)

    def _target(self, request: OapRequest) -> tuple[str | None, str | None]:
        """``(addr, path)`` of a well-formed GET, exactly one of them set (else 400).

        Remembered by payload (bounded): clients ask for hot objects with the very same
        bytes over and over, and the answer is a pure function of them. Only the
        outcome of a valid request is kept; authorization still runs per request.
        """
        payload = request.payload
        known = self._targets.get(payload)
        if known is not None:
            request.op = "get"
            return known
        body = json_request(request)
        if body.get("op") != "get":
            raise RonError(ErrorCode.BAD_REQUEST, 'storage supports only op "get"')
        addr, path = body.get("addr"), body.get("path")
        if (addr is None) == (path is None):
            raise RonError(ErrorCode.BAD_REQUEST, 'give exactly one of "addr" and "path"')
        if addr is not None and not isinstance(addr, str):
            raise RonError(ErrorCode.BAD_REQUEST, '"addr" must be a string')
        if path is not None and not isinstance(path, str):
            raise RonError(ErrorCode.BAD_REQUEST, '"path" must be a string')
        if len(payload) <= TARGET_PAYLOAD:
            if len(self._targets) >= PARSE_CACHE:
                self._targets.clear()
            self._targets[payload] = (addr, path)
        return addr, path

    def _parse(self, text: str) -> Address:
        """``parse_address`` with a small cache: hot objects are asked for by the same
        text over and over, and parsing is a pure function of it."""
        addr = self._parsed.get(text)
        if addr is None:
            addr = parse_address(text)
            if len(self._parsed) >= PARSE_CACHE:
                self._parsed.clear()
            self._parsed[text] = addr
        return addr

    async def _by_address(self, text: str, reply: Reply, authorized: bool) -> None:
        reader = self._reader
        info = reader.stat(self._parse(text))
        if info.private and not authorized:
            raise RonError(ErrorCode.UNAUTHORIZED, "this object is private: a token is required")
        if not reader.is_small(info):
            await self._stream(info, reply)
            return
        data = reader.small_payload(info)
        if len(data) > reply.chunk_size:
            await reply.send_frames(data)
        elif data:
            await reply.send(data)
        reply.end()

    async def _stream(self, info: ObjectInfo, reply: Reply) -> None:
        # The reader reads several frames' worth at a time (fewer syscalls); each read
        # goes out as its frames in one write, without copying.
        async for chunk in self._reader.stream_payload(info, 0, info.size - 1):
            await reply.send_frames(chunk)
        reply.end()

    async def _by_path(self, text: str, reply: Reply) -> None:
        root = self._tiles_root()
        if root is None:
            raise RonError(ErrorCode.NOT_FOUND, "no tiles root is configured")
        file = resolve_tile(root, text)
        try:
            st = os.stat(file)
        except OSError:
            raise RonError(ErrorCode.NOT_FOUND, "no such tile") from None
        if st.st_size:
            async for chunk in iter_file(file, 0, st.st_size - 1, STREAM_CHUNK):
                await reply.send_frames(chunk)
        reply.end()


def resolve_tile(root: Path, text: str) -> Path:
    """``/tiles/12/654/1583.webp`` -> a file under ``root``; anything escaping it is 400.

    The path is taken relative to ``root`` (a leading ``/`` is dropped). ``..``, ``.``,
    empty segments, backslashes and NUL are refused outright rather than normalised, and
    the resolved file (symlinks followed) must still lie inside the resolved root.
    """
    if "\\" in text or "\0" in text or len(text) > 4096:
        raise RonError(ErrorCode.BAD_REQUEST, "bad tile path")
    parts = text.removeprefix("/").split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise RonError(ErrorCode.BAD_REQUEST, "bad tile path")
    base = root.resolve()
    candidate = (base / PurePosixPath(*parts)).resolve()
    if not candidate.is_relative_to(base) or candidate == base:
        raise RonError(ErrorCode.BAD_REQUEST, "tile path leaves the tiles root")
    if not candidate.is_file():
        raise RonError(ErrorCode.NOT_FOUND, "no such tile")
    return candidate
