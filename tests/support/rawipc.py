"""Raw bytes to an IPC Unix socket, for the transport's hostile-peer rules."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ron.ipc.framing import FrameReader


async def raw_exchange(path: str, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Send raw bytes, read replies until the server closes; (replies, closed)."""
    reader, writer = await asyncio.open_unix_connection(path)
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        writer.write_eof()  # so a partial frame cannot leave the server waiting for more
        await writer.drain()
    frames = FrameReader()
    replies: list[dict[str, Any]] = []
    try:
        while True:
            block = await reader.read(65536)
            if not block:
                break
            replies += frames.feed(block)
    except ConnectionResetError:
        pass
    writer.close()
    return replies, True
