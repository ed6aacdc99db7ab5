"""OAP/1 frame layout: constants, the :class:`Frame` record, and one-frame encode/decode.

Every integer is unsigned little-endian (REFERENCE §5)::

    offset  field         type
         0  len           u32   bytes after this field = 33 + cap_len + payload_len
         4  ver           u8    = 1
         5  flags         u16   bits 8-15 reserved
         7  code          u16   0 = OK; HTTP status for errors
         9  app_proto_id  u16
        11  tenant_id     u128
        27  cap_len       u16
        29  corr_id       u64
        37  cap           cap_len bytes (only with START)
    37+cap  payload       the rest

The checks that can be made from a frame's first bytes (:func:`_check_prefix`) are shared
with the streaming :class:`~ron.proto.oap.codec.FrameDecoder`, so a one-shot decode and a
byte-by-byte decode reject the same inputs with the same status.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ron.proto.envelope import ErrorCode
from ron.proto.oap.errors import LocalProtocolError, OapError

VERSION = 1
"""The only protocol version this module speaks."""
LEN_PREFIX = 4
"""Size of the ``len`` field that precedes the header proper."""
FIXED = 33
"""Header bytes counted by ``len`` (ver..corr_id): the smallest legal ``len``."""
HEADER_LEN = LEN_PREFIX + FIXED
"""Size of the fixed part of a frame, ``len`` included (37)."""
MAX_FRAME = 1_048_576
"""Default limit on ``len`` (1 MiB); checked before the body is buffered."""
STORAGE_CHUNK = 65_536
"""Storage GET streams replies in chunks of this size; a convention, not a protocol limit."""
MAX_CAP = 0xFFFF
MAX_LEN = 0xFFFF_FFFF


class Flags(IntFlag):
    """Frame flags. Bits 8-15 are reserved: dropped on decode, refused on encode."""

    REQ = 0x01
    RESP = 0x02
    EVENT = 0x04
    START = 0x08
    END = 0x10
    ACK_REQ = 0x20
    COMP = 0x40
    APP_E2E = 0x80


KNOWN_FLAGS = 0xFF
"""The defined flag bits; everything above is reserved."""


class AppId(IntEnum):
    """Well-known ``app_proto_id`` values; any other u16 is legal on the wire."""

    HELLO = 0x0000
    MAILBOX = 0x0201
    STORAGE = 0x0301


# Decoding turns a flags byte into a Flags value on every frame; a table avoids running the
# enum machinery each time.
_FLAGS_BY_VALUE: tuple[Flags, ...] = tuple(Flags(value) for value in range(KNOWN_FLAGS + 1))

# len, ver, flags, code, app_proto_id, tenant_lo, tenant_hi, cap_len, corr_id
_HEADER = struct.Struct("<IBHHHQQHQ")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_CAP_LEN_OFFSET = 27
_START = int(Flags.START)  # plain int: IntFlag arithmetic is slow on the decode path
_U64 = (1 << 64) - 1

Buffer = bytes | bytearray | memoryview
"""What the decoders accept: anything holding the raw bytes."""


def flag_names(flags: int) -> str:
    """``REQ|START`` style text for logs; ``0`` when no flag is set."""
    names = [flag.name for flag in Flags if flags & flag and flag.name]
    return "|".join(names) if names else "0"


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    """One OAP/1 frame, fields as on the wire (``len`` and ``cap_len`` are derived).

    Fields are not validated here, so decoding stays cheap; :func:`encode_frame` checks
    every range before anything reaches the wire. ``repr`` shows the sizes of ``cap`` and
    ``payload`` only: caps are bearer secrets and APP_E2E payloads must never reach a log.
    """

    flags: Flags
    code: int = 0
    app_proto_id: int = 0
    tenant_id: int = 0
    corr_id: int = 0
    cap: bytes = b""
    payload: bytes = b""
    ver: int = VERSION

    @property
    def length(self) -> int:
        """The ``len`` field this frame encodes to."""
        return FIXED + len(self.cap) + len(self.payload)

    def __repr__(self) -> str:
        return (
            f"Frame(flags={flag_names(self.flags)}, code={self.code}, "
            f"app_proto_id=0x{self.app_proto_id:04x}, tenant_id={self.tenant_id}, "
            f"corr_id={self.corr_id}, cap_len={len(self.cap)}, "
            f"payload_len={len(self.payload)}, ver={self.ver})"
        )


def _check_range(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise LocalProtocolError(f"{name}={value!r} is outside 0..{maximum}")


def encode_frame(frame: Frame, *, max_frame: int = MAX_FRAME) -> bytes:
    """Serialise ``frame``, refusing anything a conforming peer would reject.

    Refusing here (rather than masking) turns a bug on our side into an exception at the
    call site instead of a confused peer: reserved flag bits, a cap without START, a
    version other than 1 and a frame longer than ``max_frame`` all raise
    :class:`LocalProtocolError`.
    """
    flags = int(frame.flags)
    if not 0 <= flags <= KNOWN_FLAGS:
        raise LocalProtocolError(f"flags=0x{flags:x}: bits 8-15 are reserved, never emitted")
    if frame.ver != VERSION:
        raise LocalProtocolError(f"ver={frame.ver!r}: only OAP/{VERSION} is spoken")
    _check_range("code", frame.code, 0xFFFF)
    _check_range("app_proto_id", frame.app_proto_id, 0xFFFF)
    _check_range("tenant_id", frame.tenant_id, (1 << 128) - 1)
    _check_range("corr_id", frame.corr_id, _U64)
    cap_len = len(frame.cap)
    if cap_len > MAX_CAP:
        raise LocalProtocolError(f"cap of {cap_len} bytes exceeds {MAX_CAP}")
    if cap_len and not flags & Flags.START:
        raise LocalProtocolError("a cap is only allowed on a START frame")
    length = FIXED + cap_len + len(frame.payload)
    if length > min(max_frame, MAX_LEN):
        raise LocalProtocolError(f"frame len {length} exceeds max_frame {max_frame}")
    header = _HEADER.pack(
        length,
        VERSION,
        flags,
        frame.code,
        frame.app_proto_id,
        frame.tenant_id & _U64,
        frame.tenant_id >> 64,
        cap_len,
        frame.corr_id,
    )
    return b"".join((header, frame.cap, frame.payload))


def _check_prefix(buf: Buffer, start: int, avail: int, max_frame: int) -> int | None:
    """Validate what the first ``avail`` bytes at ``start`` already tell; return ``len``.

    Returns ``None`` until the 4-byte ``len`` has arrived. Each check runs as soon as its
    bytes are present, so an oversized ``len`` is refused before a single body byte is
    waited for, let alone buffered. All of these errors are fatal: once ``len``, the
    version or ``cap_len`` is wrong, the frame boundaries cannot be trusted.
    """
    if avail < LEN_PREFIX:
        return None
    (length,) = _U32.unpack_from(buf, start)
    if length > max_frame:
        raise OapError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"frame len {length} exceeds max_frame {max_frame}",
            fatal=True,
        )
    if length < FIXED:
        raise OapError(
            ErrorCode.BAD_REQUEST,
            f"frame len {length} is below the {FIXED}-byte header",
            fatal=True,
        )
    if avail > LEN_PREFIX and buf[start + LEN_PREFIX] != VERSION:
        raise OapError(
            ErrorCode.BAD_REQUEST,
            f"unsupported OAP version {buf[start + LEN_PREFIX]}",
            fatal=True,
        )
    if avail >= _CAP_LEN_OFFSET + 2:
        (cap_len,) = _U16.unpack_from(buf, start + _CAP_LEN_OFFSET)
        if cap_len > length - FIXED:
            raise OapError(
                ErrorCode.BAD_REQUEST,
                f"cap_len {cap_len} does not fit in frame len {length}",
                fatal=True,
            )
    return int(length)


Fields = tuple[int, int, int, int, int, bytes, bytes]
"""A decoded frame as plain values: flags (reserved bits dropped), code, app_proto_id,
tenant_id, corr_id, cap, payload. The server's receive path works on these: building a
:class:`Frame` per request frame cost more than unpacking its header."""


def _fields_at(buf: Buffer, start: int) -> Fields:
    """The complete, prefix-checked frame at ``start``, as :data:`Fields`.

    Raises a non-fatal :class:`OapError` for a cap on a frame without START: the framing is
    intact, so only that stream is refused. Callers advance past the frame first.
    """
    (length, _, flags, code, app, t_lo, t_hi, cap_len, corr_id) = _HEADER.unpack_from(buf, start)
    flags &= KNOWN_FLAGS
    tenant = t_lo | (t_hi << 64) if t_hi else t_lo
    if cap_len and not flags & _START:
        raise OapError(
            ErrorCode.BAD_REQUEST,
            "a cap is only allowed on a START frame",
            corr_id=corr_id,
            tenant_id=tenant,
            app_proto_id=app,
            flags=flags,
        )
    cap_start = start + HEADER_LEN
    payload_start = cap_start + cap_len
    end = start + LEN_PREFIX + length
    if isinstance(buf, bytes):
        cap = buf[cap_start:payload_start] if cap_len else b""
        return flags, code, app, tenant, corr_id, cap, buf[payload_start:end]
    with memoryview(buf) as view:
        cap = bytes(view[cap_start:payload_start]) if cap_len else b""
        payload = bytes(view[payload_start:end])
    return flags, code, app, tenant, corr_id, cap, payload


def _frame_at(buf: Buffer, start: int) -> Frame:
    """Build the complete, prefix-checked frame at ``start`` (see :func:`_fields_at`)."""
    ver = buf[start + LEN_PREFIX]
    flags, code, app, tenant, corr_id, cap, payload = _fields_at(buf, start)
    return Frame(_FLAGS_BY_VALUE[flags], code, app, tenant, corr_id, cap, payload, ver)


def decode_frame(buf: Buffer, *, max_frame: int = MAX_FRAME) -> Frame:
    """Decode exactly one complete frame; anything else raises :class:`OapError`.

    The checks run in the same order as in the streaming decoder, so both report the same
    status for the same bytes. A short or over-long buffer is a 400: here the caller claims
    ``buf`` is one whole frame.
    """
    length = _check_prefix(buf, 0, len(buf), max_frame)
    if length is None or len(buf) < LEN_PREFIX + length:
        raise OapError(ErrorCode.BAD_REQUEST, "truncated frame", fatal=True)
    if len(buf) > LEN_PREFIX + length:
        raise OapError(
            ErrorCode.BAD_REQUEST,
            f"{len(buf) - LEN_PREFIX - length} bytes after the frame",
            fatal=True,
        )
    return _frame_at(buf, 0)
