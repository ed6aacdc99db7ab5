"""Coalesced writes: a response's head and body leave together, bytes never change
order, nothing waits past the end of the loop turn, and large writes are never held."""

from __future__ import annotations

import asyncio
from typing import Any

from ron.services.gateway.protocol import COALESCE_BYTES, CoalescingTransport


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", b"".join(bytes(d) for d in data)))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


async def test_head_and_body_leave_together_at_the_end_of_the_turn() -> None:
    raw = _Transport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HEAD")
    t.write(b"BODY")
    assert raw.calls == []
    assert t.get_write_buffer_size() == 8
    await asyncio.sleep(0)
    assert raw.calls == [("writelines", b"HEADBODY")]
    t.write(b"alone")
    await asyncio.sleep(0)
    assert raw.calls[-1] == ("write", b"alone")
    assert t.get_write_buffer_size() == 0


async def test_large_writes_go_at_once_after_what_waits() -> None:
    raw = _Transport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"head")
    big = b"x" * COALESCE_BYTES
    t.write(big)  # would pass the bound: out now, in order
    assert raw.calls == [("writelines", b"head" + big)]
    t.write_now(b"whole response")
    assert raw.calls[-1] == ("write", b"whole response")
    await asyncio.sleep(0)  # the turn's scheduled flush finds nothing left
    assert len(raw.calls) == 2


async def test_close_sends_what_waits_and_abort_drops_it() -> None:
    raw = _Transport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert raw.calls == [("write", b"last words"), ("close", None)]
    raw2 = _Transport()
    t2 = CoalescingTransport(raw2, asyncio.get_running_loop())  # type: ignore[arg-type]
    t2.write(b"never")
    t2.abort()
    await asyncio.sleep(0)
    assert raw2.calls == [("abort", None)]
