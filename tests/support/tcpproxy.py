"""A TCP proxy that misbehaves on purpose, to test clients against real network faults.

Each accepted connection takes the next behaviour from a plan (then ``default``):

- ``"pass"``: relay both ways untouched;
- ``"drop_response"``: relay the request to the node, let the node process it, then cut
  the client's connection the moment the answer starts, relaying none of it (a response
  lost on the way back: the request took effect, the client cannot know);
- ``"flip"``: relay everything, but flip one bit of every response body at
  ``flip_offset`` (a corrupting middlebox);
- ``"cut_body"``: relay the response headers and ``cut_after`` body bytes, then cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

CHUNK = 65536


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        default: str = "pass",
        flip_offset: int = 1000,
        cut_after: int = 300_000,
    ) -> None:
        self.target = (target_host, target_port)
        self.default = default
        self.flip_offset = flip_offset
        self.cut_after = cut_after
        self.plan: deque[str] = deque()
        self.seen: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            me = asyncio.current_task()
            handlers = [t for t in asyncio.all_tasks() if t is not me]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.plan.popleft() if self.plan else self.default
        self.seen.append(behaviour)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        upstream = asyncio.ensure_future(_pipe(reader, up_writer))
        try:
            if behaviour == "drop_response":
                await up_reader.read(CHUNK)  # the answer started: the request took effect
                writer.transport.abort()
            elif behaviour == "flip":
                await self._relay_body(up_reader, writer, flip=self.flip_offset)
            elif behaviour == "cut_body":
                await self._relay_body(up_reader, writer, cut=self.cut_after)
            else:
                await _pipe(up_reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.cancel()
            with contextlib.suppress(BaseException):
                await upstream
            up_writer.transport.abort()
            writer.transport.abort()

    async def _relay_body(
        self,
        up: asyncio.StreamReader,
        down: asyncio.StreamWriter,
        *,
        flip: int | None = None,
        cut: int | None = None,
    ) -> None:
        """Relay responses (keep-alive: one after another), altering each body at a byte
        offset: flip a bit there, or cut the connection there."""
        while True:
            head = await up.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            down.write(head)
            seen = 0
            while seen < length:
                chunk = await up.read(min(CHUNK, length - seen))
                if not chunk:
                    return
                if flip is not None and seen <= flip < seen + len(chunk):
                    data = bytearray(chunk)
                    data[flip - seen] ^= 0x01
                    chunk = bytes(data)
                if cut is not None and seen + len(chunk) >= cut:
                    down.write(chunk[: cut - seen])
                    await down.drain()
                    return  # the caller aborts the connection
                seen += len(chunk)
                down.write(chunk)
                await down.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()


@contextmanager
def tcp_proxy(http_url: str, **kwargs: object) -> Iterator[TcpProxy]:
    """A proxy in front of ``http://host:port``."""
    host, port = http_url.removeprefix("http://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port), **kwargs).start()  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()
