"""Sans-IO framing for the IPC transport: 4-byte length prefix + one MessagePack map.

Why sans-IO: the same byte-level rules (size limits, validation, error codes) must hold
whichever way bytes arrive -- an asyncio Protocol, a raw socket in a test, a fuzzer -- so
the parser is a plain object fed with ``bytes`` that returns messages or raises
:class:`FrameError`. It never allocates more than one frame's worth of buffer, and the
length prefix is checked against ``max_frame`` *before* a single body byte is buffered,
so a hostile or buggy peer cannot make the receiver allocate what the prefix claims.

The message shapes are normative in ``docs/specs/IPC.md``; :func:`validate` checks them
so that the server and client state machines can index fields without re-checking types.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final, TypeAlias, TypeGuard

import msgpack

from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "MAX_FRAME",
    "BytesLike",
    "FrameError",
    "FrameReader",
    "chunk_header",
    "encode",
    "encode_end",
    "validate",
]

HEADER_SIZE: Final = 4
"""Bytes in the big-endian unsigned length prefix."""

CHUNK_SIZE: Final = 64 * 1024
"""Recommended (and the transport's own) stream chunk: small enough to keep per-call
memory bounded, large enough that per-frame Python overhead stays negligible."""

MAX_FRAME: Final = (1 << 20) + 4096
"""Default upper bound of one frame body (the msgpack map, prefix excluded): a 1 MiB
payload plus slack for the envelope fields around it."""

_MAX_ID: Final = (1 << 64) - 1
_MAX_METHOD_LEN: Final = 256
_KINDS: Final = ("m", "c", "e", "ok", "err")
_KIND_SET: Final = frozenset(_KINDS)
_LEN: Final = struct.Struct(">I")

BytesLike: TypeAlias = bytes | bytearray | memoryview


class FrameError(RonError):
    """The peer sent bytes that are not a valid frame; the connection cannot continue.

    A subclass of :class:`RonError` so that the receiving side can answer it with the
    ordinary error envelope (``bad_request`` or ``payload_too_large``) without a mapping
    table, then close the connection: after a bad frame the stream position is unknown.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)


def _reject_ext(code: int, data: bytes) -> Any:
    # Extension types are not part of the protocol; accepting them would let a peer
    # smuggle objects the handlers never expect.
    raise ValueError(f"msgpack extension type {code} not allowed")


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int  # bool is an int subclass and must not pass


def _is_number(value: Any) -> TypeGuard[int | float]:
    return type(value) is int or type(value) is float


def validate(obj: Any) -> dict[str, Any]:
    """Check one decoded message against the shapes of docs/specs/IPC.md.

    Exactly one kind key (``m`` request, ``c`` chunk, ``e`` end, ``ok`` reply, ``err``
    error) must be present; unknown extra keys are ignored so that a newer peer may add
    optional fields. Returns the same dict so callers can chain it.
    """
    if type(obj) is not dict:
        raise FrameError(ErrorCode.BAD_REQUEST, "frame is not a msgpack map")
    cid = obj.get("id")
    if not _is_int(cid) or not 0 <= cid <= _MAX_ID:
        raise FrameError(ErrorCode.BAD_REQUEST, "frame lacks an unsigned integer 'id'")
    kinds = obj.keys() & _KIND_SET
    if len(kinds) != 1:
        raise FrameError(
            ErrorCode.BAD_REQUEST,
            f"frame must have exactly one of {_KINDS}, got {sorted(kinds)}",
        )
    (kind,) = kinds
    if kind == "m":
        method = obj["m"]
        if type(method) is not str or not 0 < len(method) <= _MAX_METHOD_LEN:
            raise FrameError(ErrorCode.BAD_REQUEST, "request 'm' must be a non-empty string")
        if type(obj.get("a")) is not dict:
            raise FrameError(ErrorCode.BAD_REQUEST, "request 'a' must be a map")
        dl = obj.get("dl")
        if not _is_number(dl) or not math.isfinite(dl):
            raise FrameError(ErrorCode.BAD_REQUEST, "request 'dl' must be a finite number")
        if type(obj.get("s", False)) is not bool:
            raise FrameError(ErrorCode.BAD_REQUEST, "request 's' must be a boolean")
    elif kind == "c":
        if type(obj["c"]) is not bytes:
            raise FrameError(ErrorCode.BAD_REQUEST, "chunk 'c' must be binary")
    elif kind == "e":
        if obj["e"] is not True:
            raise FrameError(ErrorCode.BAD_REQUEST, "end 'e' must be true")
    elif kind == "ok":
        if type(obj.get("s", False)) is not bool:
            raise FrameError(ErrorCode.BAD_REQUEST, "reply 's' must be a boolean")
    else:
        err = obj["err"]
        if (
            type(err) is not dict
            or type(err.get("code")) is not str
            or type(err.get("message")) is not str
            or type(err.get("retryable")) is not bool
        ):
            raise FrameError(
                ErrorCode.BAD_REQUEST, "error 'err' must be a map with code/message/retryable"
            )
        retry_after = err.get("retry_after")
        if retry_after is not None and (
            not _is_number(retry_after) or not math.isfinite(retry_after)
        ):
            raise FrameError(ErrorCode.BAD_REQUEST, "error 'retry_after' must be a number")
        if type(err.get("extra", {})) is not dict:
            raise FrameError(ErrorCode.BAD_REQUEST, "error 'extra' must be a map")
    return obj


def encode(msg: dict[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """One frame: length prefix + ``msg`` as msgpack (bin type for bytes).

    Raises :class:`FrameError` (``payload_too_large``) rather than emitting a frame the
    peer is bound to reject; msgpack's own ``TypeError``/``ValueError`` propagate for
    values that cannot be encoded at all.
    """
    body: bytes = msgpack.packb(msg, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"message of {len(body)} bytes exceeds the {max_frame}-byte frame limit",
        )
    return _LEN.pack(len(body)) + body


def _small_uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value < 0x100:
        return b"\xcc" + bytes((value,))
    if value < 0x10000:
        return b"\xcd" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


def chunk_header(cid: int, size: int) -> bytes:
    """Prefix + msgpack head of ``{"id": cid, "c": <size bytes>}``, without the payload.

    Why: the payload is then written right after it (``transport.writelines``) instead
    of being copied into a freshly packed frame; the result is byte-identical to
    ``encode({"id": cid, "c": payload})``.
    """
    if size < 0x100:
        bin_head = b"\xc4" + bytes((size,))
    elif size < 0x10000:
        bin_head = b"\xc5" + size.to_bytes(2, "big")
    else:
        bin_head = b"\xc6" + size.to_bytes(4, "big")
    head = b"\x82\xa2id" + _small_uint(cid) + b"\xa1c" + bin_head
    return _LEN.pack(len(head) + size) + head


def encode_end(cid: int) -> bytes:
    """The frame ``{"id": cid, "e": True}`` that ends a stream."""
    head = b"\x82\xa2id" + _small_uint(cid) + b"\xa1e\xc3"
    return _LEN.pack(len(head)) + head


class FrameReader:
    """Incremental frame decoder: ``feed(bytes)`` returns the complete messages so far.

    Once a bad frame is met the reader is poisoned: the byte stream has lost its
    framing, and the only safe reaction is one error reply and closing the connection.
    Good messages that preceded the bad frame in the same ``feed`` are still returned
    (they may be the call the error reply belongs to) and the error is then available as
    :attr:`error` and raised by every later ``feed``; with no such messages ``feed``
    raises at once.
    """

    __slots__ = ("_buf", "_error", "_max_frame", "_opts")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 64:
            raise ValueError("max_frame must be at least 64 bytes")
        self._max_frame = max_frame
        self._buf = bytearray()
        self._error: FrameError | None = None
        # Limits tie msgpack's own allocations to the frame size; with a buffer input
        # msgpack already cannot exceed it, but being explicit keeps that invariant
        # independent of library defaults.
        self._opts: dict[str, Any] = {
            "raw": False,
            "use_list": True,
            "strict_map_key": True,
            "ext_hook": _reject_ext,
            "max_bin_len": max_frame,
            "max_str_len": max_frame,
            "max_array_len": max_frame,
            "max_map_len": max_frame,
            "max_ext_len": 0,
        }

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than one frame + prefix)."""
        return len(self._buf)

    @property
    def error(self) -> FrameError | None:
        """The frame error that poisoned this reader, if any."""
        return self._error

    def feed(self, data: BytesLike) -> list[dict[str, Any]]:
        """Consume ``data``; return every message completed by it, in order."""
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        try:
            self._feed(data, out)
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            if not out:
                raise
        return out

    def _feed(self, data: BytesLike, out: list[dict[str, Any]]) -> None:
        with memoryview(data) as view:
            end = len(view)
            pos = self._complete(view, out) if self._buf else 0
            # Whole frames are decoded straight out of the caller's buffer (no copy);
            # only a trailing partial frame is kept.
            max_frame = self._max_frame
            while end - pos >= HEADER_SIZE:
                (size,) = _LEN.unpack_from(view, pos)
                if size > max_frame or size == 0:
                    self._check_size(size)
                start = pos + HEADER_SIZE
                if end - start < size:
                    break
                out.append(self._decode(view[start : start + size]))
                pos = start + size
            if pos < end:
                self._buf = bytearray(view[pos:])

    def _complete(self, view: memoryview, out: list[dict[str, Any]]) -> int:
        """Finish the buffered partial frame from ``view``; return the bytes used.

        Only the missing part of that one frame is copied, never the rest of ``view``.
        """
        buf = self._buf
        end = len(view)
        pos = 0
        if len(buf) < HEADER_SIZE:
            pos = min(HEADER_SIZE - len(buf), end)
            buf += view[:pos]
            if len(buf) < HEADER_SIZE:
                return pos
            self._check_size(_LEN.unpack_from(buf, 0)[0])
        size: int = _LEN.unpack_from(buf, 0)[0]
        need = HEADER_SIZE + size - len(buf)
        take = min(need, end - pos)
        buf += view[pos : pos + take]
        pos += take
        if take == need:
            self._buf = bytearray()
            with memoryview(buf) as whole:
                out.append(self._decode(whole[HEADER_SIZE:]))
        return pos

    def _check_size(self, size: int) -> None:
        if size > self._max_frame:
            raise FrameError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"frame of {size} bytes exceeds the {self._max_frame}-byte limit",
            )
        if size == 0:
            raise FrameError(ErrorCode.BAD_REQUEST, "empty frame")

    def _decode(self, body: memoryview) -> dict[str, Any]:
        try:
            obj = msgpack.unpackb(body, **self._opts)
        except Exception as exc:  # msgpack raises a zoo of types for malformed input
            raise FrameError(
                ErrorCode.BAD_REQUEST, f"undecodable msgpack frame: {type(exc).__name__}"
            ) from None
        finally:
            body.release()
        return validate(obj)
