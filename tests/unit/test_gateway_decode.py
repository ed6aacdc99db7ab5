"""Streaming request-body decoding: exact output, bounded pieces, both guard rails."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator

import brotli
import pytest
import zstandard

from ron.proto.envelope import ErrorCode, RonError
from ron.services.gateway.decode import PIECE, DecodeRejected, decode_body

# Ordinary data: random stretches (incompressible) and text (about 4:1).
DATA = (os.urandom(200_000) + b"the quick brown fox " * 20_000) * 3
ENCODE = {
    "zstd": lambda b: zstandard.ZstdCompressor(level=3).compress(b),
    "gzip": lambda b: gzip.compress(b, 6),
    "br": lambda b: brotli.compress(b, quality=4),
}


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _decode(body: bytes, coding: str, *, size: int = 65_536, cap: int = 1 << 30) -> list[bytes]:
    async def run() -> list[bytes]:
        stream = decode_body(_chunks(body, size), coding, max_decoded=cap, max_ratio=10)
        return [piece async for piece in stream]

    return asyncio.run(run())


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_decoded_bytes_are_exact_whatever_the_chunking(coding: str) -> None:
    body = ENCODE[coding](DATA)
    for size in (1, 1000, 65_536, len(body)):
        if size == 1 and coding != "zstd":
            continue  # byte-at-a-time is slow for the others and proves nothing more
        assert b"".join(_decode(body, coding, size=size)) == DATA


def test_zstd_hands_on_pieces_of_at_least_64_kib() -> None:
    """Per-kilobyte pieces made the caller's hashing and writes the cost of a PUT: every
    piece but the last of each fed chunk is at least PIECE."""
    pieces = _decode(ENCODE["zstd"](DATA), "zstd", size=len(DATA))
    assert all(len(p) >= PIECE for p in pieces[:-1])
    assert len(pieces) <= len(DATA) // PIECE + 1


def test_zstd_concatenated_frames_decode_as_one_body() -> None:
    parts = [DATA[:100_000], DATA[100_000:350_000], DATA[350_000:]]
    body = b"".join(ENCODE["zstd"](p) for p in parts)
    for size in (7, 4096, len(body)):
        assert b"".join(_decode(body, "zstd", size=size)) == DATA


def test_truncated_zstd_is_a_bad_request() -> None:
    body = ENCODE["zstd"](DATA)
    with pytest.raises(RonError) as err:
        _decode(body[: len(body) // 2], "zstd")
    assert err.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_bombs_stop_at_a_guard_rail(coding: str) -> None:
    bomb = ENCODE[coding](bytes(64 << 20))
    with pytest.raises(DecodeRejected) as err:
        _decode(bomb, coding, cap=8 << 20)
    assert err.value.reason in ("ratio_cap", "decompress_cap")
