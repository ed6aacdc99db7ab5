"""Raw OAP/1 over real sockets for tests: send exact bytes, read back whole frames.

The SDK client hides framing; the tests of the server's error paths need the opposite:
frames the SDK would never produce, and the frames exactly as the server sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
from pathlib import Path
from typing import Any

from ron.proto.oap import AppId, Flags, Frame, FrameDecoder, encode_frame
from ron.sdk.oap import client_context, parse_url

_tenants = itertools.count(10_000)
_default_cap: list[bytes] = [b""]


def use_cap(token: str | None) -> None:
    """The capability :func:`get_frame` puts on START frames unless given one: the
    owner token of the node a test module talks to (the node refuses START without)."""
    _default_cap[0] = (token or "").encode("ascii")


def fresh_tenant() -> int:
    """A tenant id no other request of this test run used: its own token bucket."""
    return next(_tenants)


_caps: dict[tuple[str, int], bytes] = {}


def tenant_cap(node: Any, tenant: int) -> bytes:
    """A capability of tenant ``t<tenant>`` on ``node`` (a RunningNode): with tokens, the
    token's tenant picks the quota bucket, so a fresh tenant needs a token of its own."""
    key = (str(node.data_dir), tenant)
    if key not in _caps:
        _caps[key] = node.mint(f"t{tenant}").encode("ascii")
    return _caps[key]


def ca_file(data_dir: Path) -> Path:
    return data_dir / "tls" / "ca.crt"


def get_frame(
    corr_id: int,
    *,
    addr: str | None = None,
    path: str | None = None,
    tenant_id: int = 0,
    flags: Flags = Flags.REQ | Flags.START | Flags.END,
    cap: bytes | None = None,
) -> bytes:
    """A storage GET request frame (one-shot by default), with :func:`use_cap`'s token
    on START frames unless ``cap`` is given."""
    body: dict[str, Any] = {"op": "get"}
    if addr is not None:
        body["addr"] = addr
    if path is not None:
        body["path"] = path
    payload = json.dumps(body).encode()
    if cap is None:
        cap = _default_cap[0] if flags & Flags.START else b""
    return encode_frame(
        Frame(
            flags,
            app_proto_id=AppId.STORAGE,
            tenant_id=tenant_id,
            corr_id=corr_id,
            cap=cap,
            payload=payload,
        )
    )


class RawOap:
    """One connection; :meth:`frame` returns the next frame the server sent.

    ``received`` keeps every byte as it arrived, for checks the decoder would hide (it
    clears reserved flag bits, as a receiver must).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.queued: list[Frame] = []
        self.received = bytearray()

    @classmethod
    async def open(
        cls, url: str, data_dir: Path, *, context: ssl.SSLContext | None = None
    ) -> RawOap:
        host, port, tls = parse_url(url)
        if tls and context is None:
            context = client_context(ca_file(data_dir))
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context if tls else None, server_hostname=host if tls else None
            )
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 15.0) -> Frame:
        """The next frame; fails on EOF or at the deadline."""
        async with asyncio.timeout(timeout):
            while not self.queued:
                data = await self.reader.read(1 << 20)
                if not data:
                    raise EOFError("the server closed the connection")
                self.received += data
                self.queued.extend(self.decoder.feed(data))
        return self.queued.pop(0)

    async def reply(self, corr_id: int, timeout: float = 30.0) -> list[Frame]:
        """Every frame of ``corr_id``'s reply, up to the one with END (others kept)."""
        frames: list[Frame] = []
        others: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                if frame.corr_id != corr_id:
                    others.append(frame)
                    continue
                frames.append(frame)
                if frame.flags & Flags.END:
                    break
        self.queued[:0] = others
        return frames

    async def eof(self, timeout: float = 15.0) -> bool:
        """True once the server closed the connection (frames before it are kept)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(1 << 20)
                except (ConnectionError, ssl.SSLError):
                    return True
                if not data:
                    return True
                self.received += data
                self.queued.extend(self.decoder.feed(data))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def body(frame: Frame) -> Any:
    return json.loads(frame.payload)
