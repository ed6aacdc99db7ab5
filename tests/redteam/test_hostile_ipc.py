"""Malformed and oversized frames sent straight to every service's Unix socket
(docs/specs/IPC.md §1 and §4), the kernel's included.

The sockets are private to the node's user (mode 0600 in the run directory), so this is
a buggy or compromised local peer, not the internet; still, a bad frame must cost that
one connection only: one error reply (``bad_request`` or ``payload_too_large``, id 0
unless the frame was a readable message) or a plain close, and the process goes on:
same pid, no restart, a well-formed call on a new connection answered, /readyz 200,
memory bounded.
"""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from ron.ipc import IpcClient
from ron.ipc.framing import MAX_FRAME, encode
from support.node import RunningNode, node_file
from support.procmem import vm_kib
from support.rawipc import raw_exchange
from support.redteam import MEMORY_BOUND_KIB

SOCKETS = ("kernel", "index", "storage", "overlay", "mailbox", "gateway", "omnigate")


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def request(**fields: Any) -> bytes:
    return framed(msgpack.packb({"id": 1, "m": "sys.health", "a": {}, "dl": 5.0, **fields}))


BAD, TOO_LARGE = "bad_request", "payload_too_large"
CASES: dict[str, tuple[bytes, list[tuple[int, str]]]] = {
    "undecodable msgpack": (framed(b"\xc1\xc1garb"), [(0, BAD)]),
    "length prefix 2**32-1": (b"\xff\xff\xff\xff", [(0, TOO_LARGE)]),
    "length prefix max_frame+1": (struct.pack(">I", MAX_FRAME + 1), [(0, TOO_LARGE)]),
    "empty frame": (b"\x00\x00\x00\x00", [(0, BAD)]),
    "not a map": (framed(msgpack.packb([1, 2, 3])), [(0, BAD)]),
    "extension type": (framed(msgpack.packb({"id": 1, "m": msgpack.ExtType(5, b"x")})), [(0, BAD)]),
    "integer map key": (framed(msgpack.packb({1: 2, "id": 1, "m": "sys.health"})), [(0, BAD)]),
    "negative id": (request(id=-1), [(0, BAD)]),
    "id not an integer": (request(id="1"), [(0, BAD)]),
    "id a boolean": (request(id=True), [(0, BAD)]),
    "method of 300 characters": (request(m="x" * 300), [(0, BAD)]),
    "NaN deadline": (request(dl=float("nan")), [(0, BAD)]),
    "arguments not a map": (request(a=[1]), [(0, BAD)]),
    "two kind keys": (request(ok=1), [(0, BAD)]),
    "a reply sent to a server": (encode({"id": 4, "ok": 1}), [(4, BAD)]),
    "a chunk with no call": (encode({"id": 9, "c": b"x"}), [(9, BAD)]),
    "unknown method": (request(m="nope.nothing"), [(1, BAD)]),
    "100k nested arrays": (framed(b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0"), [(0, BAD)]),
    "map claiming 2**32-1 entries": (framed(b"\xdf\xff\xff\xff\xff"), [(0, BAD)]),
    "string claiming 4 GiB": (framed(b"\x81\xa2id\xdb\xff\xff\xff\xff"), [(0, BAD)]),
    "bytes after the map": (framed(msgpack.packb({"id": 1, "e": True}) + b"\x00"), [(0, BAD)]),
    "frame cut short, then EOF": (struct.pack(">I", 100) + b"\x85" * 10, []),
    "a whole max_frame of random bytes": (
        framed(b"\xc1" + random.Random(3).randbytes(MAX_FRAME - 1)),
        [(0, BAD)],
    ),
}


@pytest.fixture(scope="module")
def run_dir(node: RunningNode) -> Path:
    return Path(node_file(node.data_dir)["run_dir"])


def pid_of(node: RunningNode, name: str) -> int:
    return int(node.status()["node"]["pid"]) if name == "kernel" else node.service_pid(name)


async def answers_a_call(path: Path, name: str) -> None:
    """A well-formed call on a new connection is answered as usual."""
    client = IpcClient(str(path))
    try:
        if name == "kernel":
            snapshot = await client.call("sys.ready", timeout=10)
            assert snapshot["ready"] is True
        else:
            health = await client.call("sys.health", timeout=10)
            assert health["ok"] is True
    finally:
        await client.close()


@pytest.mark.parametrize("name", SOCKETS)
async def test_bad_frames_cost_one_connection_never_the_service(
    node: RunningNode, run_dir: Path, name: str
) -> None:
    path = run_dir / f"{name}.sock"
    pid = pid_of(node, name)
    rss = vm_kib(pid)
    *replies, _ = await asyncio.gather(
        *(raw_exchange(str(path), data) for data, _ in CASES.values()),
        answers_a_call(path, name),  # meanwhile, on its own connection
    )
    got = {
        case: [(r["id"], r["err"]["code"]) for r in answer]
        for case, (answer, closed) in zip(CASES, replies, strict=True)
        if closed
    }
    assert got == {case: expected for case, (_, expected) in CASES.items()}
    # Ten clients at once, each with a whole max_frame of garbage.
    flood = CASES["a whole max_frame of random bytes"][0]
    for answer, _ in await asyncio.gather(*(raw_exchange(str(path), flood) for _ in range(10))):
        assert [(r["id"], r["err"]["code"]) for r in answer] == [(0, BAD)]
    await answers_a_call(path, name)
    assert pid_of(node, name) == pid
    if name != "kernel":
        [status] = [s for s in node.status()["services"] if s["service"] == name]
        assert status["restarts"] == 0 and status["healthy"] is True
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{node.admin}/readyz")).status_code == 200
    grown = vm_kib(pid) - rss
    assert grown < MEMORY_BOUND_KIB, f"{name} RSS grew by {grown} KiB"
