"""COMP payloads: zstd with guard rails against decompression bombs.

A compressed payload may expand to at most ``8 x max_frame`` bytes and at most ten times
its own size; past either bound the frame is refused with 413 (REFERENCE §5). The bounds
hold during decompression, not after it: output is counted as libzstd produces it and the
work stops at the first byte over the limit, so a 32 KiB bomb that unpacks to 1 GiB costs
at most the limit plus one 64 KiB chunk of memory.

python-zstandard offers no single call that both bounds the output and reports a
truncated frame (its streaming writer accepts a cut-off frame silently; its one-shot
``decompress`` trusts the declared content size and allocates it). So there are two passes:
a streaming pass that only counts, under the limit, then a ``decompressobj`` pass, now
known to stay under the limit, that keeps the bytes and checks every frame ended.
"""

from __future__ import annotations

import io
from typing import IO, cast

import zstandard

from ron.proto.envelope import ErrorCode
from ron.proto.oap.errors import OapError
from ron.proto.oap.frame import MAX_FRAME

MAX_EXPANSION = 8
"""Decompressed size limit, in multiples of ``max_frame``."""
MAX_RATIO = 10
"""Decompressed size limit, in multiples of the compressed size."""
DEFAULT_LEVEL = 3

_CHUNK = 65_536
_UNKNOWN_SIZE = (1 << 64) - 2  # ZSTD_CONTENTSIZE_ERROR; UNKNOWN is one above


class _TooLarge(Exception):
    pass


class _CountingSink(io.BytesIO):
    """A write target that keeps nothing and stops the decoder past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0

    def write(self, data: object) -> int:
        size = memoryview(cast(bytes, data)).nbytes
        self.total += size
        if self.total > self.limit:
            raise _TooLarge
        return size


def decompressed_limit(compressed_len: int, max_frame: int = MAX_FRAME) -> int:
    """The most bytes a COMP payload of ``compressed_len`` bytes may expand to."""
    return min(MAX_EXPANSION * max_frame, MAX_RATIO * compressed_len)


def _window_limit(max_frame: int) -> int:
    """The largest zstd window we decode with: the output bound, rounded up to a power of 2.

    A window larger than the most output we accept buys the sender nothing and costs us
    memory, so it is refused; rounding up keeps every window a compressor picks for a
    payload within bounds acceptable.
    """
    return 1 << (MAX_EXPANSION * max_frame - 1).bit_length()


def _too_large(limit: int) -> OapError:
    return OapError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"compressed payload expands beyond {limit} bytes (limits: "
        f"{MAX_EXPANSION} x max_frame, {MAX_RATIO}:1)",
    )


def _malformed(detail: str) -> OapError:
    return OapError(ErrorCode.BAD_REQUEST, f"malformed zstd payload: {detail}")


def decompress_payload(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """Decompress a COMP payload within the guard rails.

    Raises :class:`OapError` 413 when a bound would be crossed and 400 when the payload is
    not complete, well-formed zstd (one or more concatenated frames, nothing after them).
    An empty payload stays empty: there is nothing to decompress, and refusing it would
    punish senders that set COMP on every frame of a stream, including an empty END.
    The errors are non-fatal: the frame was read whole, only its stream is refused.
    """
    if not payload:
        return b""
    limit = decompressed_limit(len(payload), max_frame)
    window_limit = _window_limit(max_frame)
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise _malformed(str(exc)) from None
    if params.content_size < _UNKNOWN_SIZE and params.content_size > limit:
        # Declared sizes are checked for an early answer only; the counting pass below
        # enforces the bound whatever the header claims.
        raise _too_large(limit)
    if params.window_size > window_limit:
        raise _too_large(limit)
    dctx = zstandard.ZstdDecompressor(max_window_size=window_limit)
    sink = _CountingSink(limit)
    try:
        writer = dctx.stream_writer(cast(IO[bytes], sink), write_size=_CHUNK)
        writer.write(payload)
    except _TooLarge:
        raise _too_large(limit) from None
    except zstandard.ZstdError as exc:
        raise _malformed(str(exc)) from None
    parts: list[bytes] = []
    rest = payload
    try:
        while rest:
            obj = dctx.decompressobj(write_size=_CHUNK)
            parts.append(obj.decompress(rest))
            if not obj.eof:
                raise _malformed("truncated frame")
            rest = obj.unused_data
    except zstandard.ZstdError as exc:
        raise _malformed(str(exc)) from None
    out = b"".join(parts)
    if len(out) > limit:  # pragma: no cover - the counting pass already proved this
        raise _too_large(limit)
    return out


def compress_payload(
    data: bytes, *, level: int = DEFAULT_LEVEL, max_frame: int = MAX_FRAME
) -> bytes | None:
    """Compress ``data`` for a COMP frame, or return ``None`` when COMP must not be used.

    ``None`` means: send ``data`` as is, without COMP, because compressing would not make it
    smaller, or the receiver's guard rails would refuse it (expansion beyond
    ``8 x max_frame`` or a ratio above 10:1). Checking here keeps a sender from producing
    frames its peer is bound to reject.
    """
    if not data or len(data) > MAX_EXPANSION * max_frame:
        return None
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    if len(packed) >= len(data) or len(data) > decompressed_limit(len(packed), max_frame):
        return None
    return packed
