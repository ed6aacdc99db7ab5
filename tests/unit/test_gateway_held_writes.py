"""Held writes: a response head waits for its body, and bytes never change order."""

from __future__ import annotations

import asyncio
from typing import Any

from ron.services.gateway.protocol import HeldWrites


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, data: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", b"".join(bytes(d) for d in data)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def get_write_buffer_size(self) -> int:
        return 0


async def test_held_writes_join_head_and_body_and_keep_order() -> None:
    raw = _Transport()
    held = HeldWrites(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    held.write(b"HEAD")
    assert raw.calls == []
    assert held.get_write_buffer_size() == 4
    held.write(b"BODY")
    assert raw.calls == [("writelines", b"HEADBODY")]
    held.write(b"next")  # nothing follows in this iteration: it leaves on the next one
    await asyncio.sleep(0)
    assert raw.calls[-1] == ("write", b"next")
    held.write(b"x" * 100_000)  # large writes are never held
    assert raw.calls[-1] == ("write", b"x" * 100_000)
    held.write(b"last")
    held.close()
    assert raw.calls[-2:] == [("write", b"last"), ("close", None)]
