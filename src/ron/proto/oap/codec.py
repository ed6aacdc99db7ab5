"""Streaming OAP/1 decoder: bytes in, frames out, no I/O.

The transport hands over whatever a read returned; frames can be split anywhere or packed
several to a chunk. The decoder keeps one ``bytearray`` and a read position, so a long
run of frames in one chunk is parsed without copying the rest of the buffer per frame,
and a frame trickling in byte by byte costs O(1) per byte.

Limits are enforced from the header alone: a ``len`` over ``max_frame`` is refused as soon
as its four bytes are in, before any body byte is awaited, so a peer cannot make us
reserve (or wait on) memory it has merely announced.
"""

from __future__ import annotations

from ron.proto.oap.errors import OapError
from ron.proto.oap.frame import (
    FIXED,
    LEN_PREFIX,
    MAX_FRAME,
    MAX_LEN,
    Buffer,
    Fields,
    Frame,
    _check_prefix,
    _fields_at,
    _frame_at,
)


class FrameDecoder:
    """Incremental decoder for one direction of one connection.

    Errors come as :class:`OapError` and nothing else. A fatal one is sticky: the decoder
    drops its buffer and raises it again on every later call, because after a framing
    error no later byte can be trusted. A non-fatal one (a cap on a non-START frame) skips
    that frame and decoding goes on.
    """

    __slots__ = ("_buf", "_error", "_max_frame", "_pos")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not FIXED <= max_frame <= MAX_LEN:
            raise ValueError(f"max_frame must be within {FIXED}..{MAX_LEN}")
        self._max_frame = max_frame
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._error: OapError | None = None

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame)."""
        return len(self._buf) - self._pos

    def receive_data(self, data: Buffer) -> None:
        """Buffer ``data`` without parsing; pair with :meth:`next_frame`."""
        if self._error is not None:
            return
        buf, pos = self._buf, self._pos
        self._pos = 0
        if pos >= len(buf):
            # Nothing pending: frames are parsed from ``data`` where it is (no copy into
            # our buffer) when it is immutable, as a transport's reads are.
            self._buf = data if type(data) is bytes else bytearray(data)
            return
        if isinstance(buf, bytes):
            rest = bytearray(buf[pos:])  # a partial frame left in a borrowed chunk
            rest += data
            self._buf = rest
            return
        if pos:
            # One compaction per chunk, not per frame: bounded by the partial frame left.
            del buf[:pos]
        buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive."""
        start = self._next_start()
        return None if start is None else _frame_at(self._buf, start)

    def next_fields(self) -> Fields | None:
        """:meth:`next_frame` as plain values (:data:`~ron.proto.oap.frame.Fields`)."""
        start = self._next_start()
        return None if start is None else _fields_at(self._buf, start)

    def _next_start(self) -> int | None:
        """Where the next complete frame starts (and step past it), else ``None``."""
        if self._error is not None:
            raise self._error.clone()
        buf = self._buf
        start = self._pos
        avail = len(buf) - start
        try:
            length = _check_prefix(buf, start, avail, self._max_frame)
        except OapError as exc:
            self._error = exc
            self._buf = bytearray()
            self._pos = 0
            raise
        if length is None or avail < LEN_PREFIX + length:
            if avail == 0 and start:
                self._buf = b""
                self._pos = 0
            return None
        self._pos = start + LEN_PREFIX + length
        return start

    def feed(self, data: Buffer) -> list[Frame]:
        """Buffer ``data`` and return every frame it completes.

        On error the frames decoded before it from this call travel on the exception as
        ``exc.frames``, so a caller can still serve them before acting on the error.
        """
        self.receive_data(data)
        frames: list[Frame] = []
        try:
            while (frame := self.next_frame()) is not None:
                frames.append(frame)
        except OapError as exc:
            exc.frames = tuple(frames)
            raise
        return frames
