"""Connections spread evenly over gateway workers, and none is stranded.

Two listeners stand for two workers: each has its own descriptor of one listening
socket (as forked workers do) and its own slot in one shared table, in one event loop.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ron.services.balance import BalancedListener, ConnectionShares


class _Held(asyncio.Protocol):
    """A protocol that records itself in its worker's set while its connection lives."""

    def __init__(self, held: set[asyncio.Protocol]) -> None:
        self.held = held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.held.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.held.discard(self)


async def _connect_burst(port: int, n: int) -> list[socket.socket]:
    """``n`` connections opened at once, so they wait in the backlog together."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        socks.append(s)
    await asyncio.gather(*(loop.sock_connect(s, ("127.0.0.1", port)) for s in socks))
    return socks


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _two_workers(
    sock: socket.socket, table: Path, held: list[set[asyncio.Protocol]]
) -> list[BalancedListener]:
    """Two workers' listeners on one socket, each with its own descriptor and slot."""

    def make(slot: int, s: socket.socket) -> BalancedListener:
        mine = held[slot]
        # Patient enough that a slow loop on a busy machine cannot end a deferral early
        # (the default's bound is the stranding test's subject).
        shares = ConnectionShares(table, slot, 2)
        return BalancedListener(s, lambda: _Held(mine), mine, shares, max_defer_s=10.0)

    return [make(0, sock), make(1, sock.dup())]


def test_a_burst_of_connections_splits_evenly_between_two_workers(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        sock = _listening()
        held: list[set[asyncio.Protocol]] = [set(), set()]
        listeners = _two_workers(sock, tmp_path / "conns", held)
        clients = await _connect_burst(sock.getsockname()[1], 8)
        await _until(lambda: len(held[0]) + len(held[1]) == 8)
        counts = len(held[0]), len(held[1])
        for c in clients:
            c.close()
        for listener in listeners:
            listener.close()
            await listener.wait_closed()
        return counts

    assert asyncio.run(run()) == (4, 4)


def test_a_worker_that_never_accepts_strands_nothing(tmp_path: Path) -> None:
    """The other worker's slot says it holds nothing, but it never takes a connection
    (busy, or gone and restarting): each waits a few milliseconds, then is accepted."""

    async def run() -> int:
        sock = _listening()
        table = tmp_path / "conns"
        idle_other = ConnectionShares(table, 1, 2)
        idle_other.publish(0)
        held: set[asyncio.Protocol] = set()
        listener = BalancedListener(sock, lambda: _Held(held), held, ConnectionShares(table, 0, 2))
        clients = await _connect_burst(sock.getsockname()[1], 6)
        await _until(lambda: len(held) == 6)
        served = len(held)
        for c in clients:
            c.close()
        listener.close()
        await listener.wait_closed()
        return served

    assert asyncio.run(run()) == 6


def test_closed_connections_free_their_share(tmp_path: Path) -> None:
    """A worker whose connections closed takes new ones again (it publishes what it
    holds now, not what it once held)."""

    async def run() -> tuple[int, int]:
        sock = _listening()
        held: list[set[asyncio.Protocol]] = [set(), set()]
        listeners = _two_workers(sock, tmp_path / "conns", held)
        port = sock.getsockname()[1]
        first = await _connect_burst(port, 4)
        await _until(lambda: len(held[0]) + len(held[1]) == 4)
        for c in first:
            c.close()
        await _until(lambda: not held[0] and not held[1])
        second = await _connect_burst(port, 6)
        await _until(lambda: len(held[0]) + len(held[1]) == 6)
        counts = len(held[0]), len(held[1])
        for c in second:
            c.close()
        for listener in listeners:
            listener.close()
            await listener.wait_closed()
        return counts

    assert asyncio.run(run()) == (3, 3)


def test_a_worker_publishes_its_share_when_a_connection_closes(tmp_path: Path) -> None:
    """Two clients that reconnect together land on two workers again: a worker's share
    drops when its connections close, not only at its next accept. Otherwise the first
    worker to wake reads the other's stale share and takes both."""

    async def run() -> list[tuple[int, int]]:
        sock = _listening()
        held: list[set[asyncio.Protocol]] = [set(), set()]
        listeners = _two_workers(sock, tmp_path / "conns", held)
        port = sock.getsockname()[1]
        splits = []
        for _ in range(3):
            pair = await _connect_burst(port, 2)
            await _until(lambda: len(held[0]) + len(held[1]) == 2)
            splits.append((len(held[0]), len(held[1])))
            for c in pair:
                c.close()
            await _until(lambda: not held[0] and not held[1])
        for listener in listeners:
            listener.close()
            await listener.wait_closed()
        return splits

    assert asyncio.run(run()) == [(1, 1)] * 3


def test_a_connection_being_handed_over_counts_once(tmp_path: Path) -> None:
    """When a protocol's connection_made runs (uvicorn's adds it to the held set there),
    the worker's count must not also still hold it as "opening": a share published one
    too high lets the other worker take one connection too many (seen as a 3-5 split)."""

    async def run() -> list[tuple[int, int]]:
        sock = _listening()
        held: set[asyncio.Protocol] = set()
        seen: list[tuple[int, int]] = []
        listener: BalancedListener | None = None

        class _Counting(_Held):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                assert listener is not None
                seen.append((listener.count(), len(self.held)))

        shares = ConnectionShares(tmp_path / "conns", 0, 1)
        listener = BalancedListener(sock, lambda: _Counting(held), held, shares)
        clients = []
        for n in range(1, 6):  # one at a time, so none is mid-accept when another is made
            clients += await _connect_burst(sock.getsockname()[1], 1)
            await _until(lambda: len(seen) == n)  # noqa: B023 (awaited before n moves on)
        for c in clients:
            c.close()
        listener.close()
        await listener.wait_closed()
        return seen

    assert asyncio.run(run()) == [(n, n) for n in range(1, 6)]
