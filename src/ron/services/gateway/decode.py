"""Streaming decoders for compressed request bodies, with both guard rails.

``Content-Encoding: zstd | gzip | br`` bodies are decoded as they arrive, never whole,
and every output piece is bounded: the decoded total may not exceed ``max_decoded``
(413, ``decompress_cap``) nor ``max_ratio`` times the encoded bytes read so far (413,
``ratio_cap``), so a bomb costs at most the cap plus one piece of memory. Bodies that
decode to at most ``RATIO_FLOOR`` bytes are not ratio-checked: they cannot amplify
anything, and small text legitimately compresses far better than 10:1.
Stacked encodings (``gzip, br``) are refused with 415: one layer is all a client needs.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import brotli
import zstandard

from ron.proto.envelope import ErrorCode, RonError

PIECE = 64 * 1024
RATIO_FLOOR = 64 * 1024
CODINGS = ("zstd", "gzip", "br")


class DecodeRejected(RonError):
    """413 from a guard rail; ``reason`` is the ``rejected_total`` label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(ErrorCode.PAYLOAD_TOO_LARGE, message)
        self.reason = reason


def parse_content_encoding(header: str | None) -> str | None:
    """The one coding to undo, None for identity; 415 for stacked or unknown codings."""
    if header is None:
        return None
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise RonError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "stacked content encodings are refused")
    if codings[0] not in CODINGS:
        raise RonError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"unsupported content encoding {codings[0]!r}"
        )
    return codings[0]


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...
    def finish(self) -> Iterator[bytes]: ...


class _Gzip:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            out = self._d.decompress(data, PIECE)
            data = self._d.unconsumed_tail
            if out:
                yield out
            if self._d.eof:
                return

    def finish(self) -> Iterator[bytes]:
        if not self._d.eof:
            raise RonError(ErrorCode.BAD_REQUEST, "truncated gzip body")
        return iter(())


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        out = self._d.process(data, output_buffer_limit=PIECE)
        if out:
            yield out
        while not self._d.can_accept_more_data():
            out = self._d.process(b"", output_buffer_limit=PIECE)
            if not out:
                break
            yield out

    def finish(self) -> Iterator[bytes]:
        while not self._d.is_finished():
            out = self._d.process(b"", output_buffer_limit=PIECE)
            if not out:
                raise RonError(ErrorCode.BAD_REQUEST, "truncated brotli body")
            yield out


class _Zstd:
    """zstd, fed in small slices so that one highly compressed chunk cannot expand far
    past a guard rail before the caller sees the output and can stop (a 256-byte slice
    of RLE blocks expands to a few MiB at most). Frames may be concatenated; the body
    must end on a frame boundary.

    A slice of ordinary data decodes to about a kilobyte, so outputs are gathered into
    pieces of at least ``PIECE`` before they are handed on: the caller's checks, hashing
    and writes then run per 64 KiB, not per kilobyte (which held decoding to a fifth of
    this speed), while a piece still holds at most ``PIECE`` plus one slice's output.
    """

    SLICE = 256

    def __init__(self, window_limit: int) -> None:
        self._dctx = zstandard.ZstdDecompressor(max_window_size=window_limit)
        self._obj = self._dctx.decompressobj(write_size=PIECE)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        held: list[bytes] = []
        size = 0
        for i in range(0, len(view), self.SLICE):
            piece: bytes = bytes(view[i : i + self.SLICE])
            while piece:
                self._started = True
                out = self._obj.decompress(piece)
                if out:
                    held.append(out)
                    size += len(out)
                    if size >= PIECE:
                        yield b"".join(held)
                        held.clear()
                        size = 0
                if not self._obj.eof:
                    break
                piece = self._obj.unused_data  # a next frame starts in this slice
                self._obj = self._dctx.decompressobj(write_size=PIECE)
                self._started = False
        if held:
            yield b"".join(held)

    def finish(self) -> Iterator[bytes]:
        if self._started and not self._obj.eof:
            raise RonError(ErrorCode.BAD_REQUEST, "truncated zstd body")
        return iter(())


def _decoder(coding: str) -> _Decoder:
    if coding == "gzip":
        return _Gzip()
    if coding == "br":
        return _Brotli()
    return _Zstd(window_limit=1 << 27)


async def decode_body(
    chunks: AsyncIterator[bytes], coding: str, *, max_decoded: int, max_ratio: float
) -> AsyncIterator[bytes]:
    """Yield decoded pieces of ``chunks`` under both guard rails."""
    decoder = _decoder(coding)
    encoded = 0
    decoded = 0

    def check(piece: bytes) -> bytes:
        nonlocal decoded
        decoded += len(piece)
        if decoded > max_decoded:
            raise DecodeRejected("decompress_cap", f"decoded body exceeds {max_decoded} bytes")
        if decoded > RATIO_FLOOR and decoded > max_ratio * max(encoded, 1):
            raise DecodeRejected(
                "ratio_cap", f"body expands more than {max_ratio:g}:1 when decoded"
            )
        return piece

    try:
        async for chunk in chunks:
            encoded += len(chunk)
            for piece in decoder.feed(chunk):
                yield check(piece)
        for piece in decoder.finish():
            yield check(piece)
    except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
        raise RonError(ErrorCode.BAD_REQUEST, f"malformed {coding} body: {exc}") from None
