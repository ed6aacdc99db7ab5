"""OAP/1 connection state machines (sans-IO) and the reply builders.

:class:`ServerConnection` and :class:`ClientConnection` own a :class:`FrameDecoder` and
the per-``corr_id`` stream table of one connection. They never touch a socket: the caller
passes in bytes it read and gets events back, and asks for the bytes of each frame it
wants to send. The asyncio wrapper is then a loop::

    for event in conn.receive_data(await read()):
        match event:
            case Hello():
                write(conn.send_hello(event))
            case RequestStarted(end=True):
                ...handle..., write(conn.send_response(event, body))
            case ProtocolError():
                write(conn.send_error(event, event.error, new_corr_id()))
                if event.fatal:
                    close()

Stream rules (REFERENCE §5): ``REQ|START`` opens a stream on a corr_id, ``REQ`` continues
it, ``REQ|END`` closes it, ``REQ|START|END`` is a one-shot. A reply is ``RESP|START``,
``RESP``…, ``RESP|END``, or a single ``RESP|END``. Violations become a non-fatal
:class:`ProtocolError` for that stream; after one, the server ignores the stream's
remaining non-START frames up to the one carrying END, so a client that pipelined a
rejected upload does not provoke one error frame per chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ron import __version__
from ron.proto.envelope import CODE_OF_STATUS, ErrorCode, RonError
from ron.proto.oap.codec import FrameDecoder
from ron.proto.oap.comp import compress_payload, decompress_payload
from ron.proto.oap.errors import LocalProtocolError, OapError
from ron.proto.oap.events import (
    ClientEvent,
    Hello,
    HelloReply,
    ProtocolError,
    ReplyTarget,
    RequestData,
    RequestEnded,
    RequestStarted,
    ResponseData,
    ResponseEnded,
    ResponseStarted,
    ServerEvent,
)
from ron.proto.oap.frame import (
    _FLAGS_BY_VALUE,
    _HEADER,
    _U64,
    FIXED,
    HEADER_LEN,
    KNOWN_FLAGS,
    LEN_PREFIX,
    MAX_FRAME,
    MAX_LEN,
    VERSION,
    AppId,
    Buffer,
    Fields,
    Flags,
    Frame,
    encode_frame,
)

NO_FLAGS = Flags(0)
# Plain-int copies for the receive path: IntFlag arithmetic runs through the enum
# machinery on every operation and was half the cost of handling a request.
_REQ, _RESP, _EVENT, _START, _END = (
    int(f) for f in (Flags.REQ, Flags.RESP, Flags.EVENT, Flags.START, Flags.END)
)
_COMP, _E2E = int(Flags.COMP), int(Flags.APP_E2E)
_HELLO = int(AppId.HELLO)
_RESP_END = Flags.RESP | Flags.END
_ONE_SHOT = _REQ | _START | _END
OPTIONAL_FLAGS = Flags.EVENT | Flags.ACK_REQ | Flags.COMP | Flags.APP_E2E
"""Flags a caller may add to a frame; direction, START and END belong to the machine."""
_OPTIONAL = int(OPTIONAL_FLAGS)
SUPPORTED_FLAGS: tuple[str, ...] = ("EVENT", "ACK_REQ", "COMP", "APP_E2E")
"""The optional features a HELLO reply advertises (REQ/RESP/START/END are mandatory)."""
DEFAULT_STREAM_BYTES = 16 * 1024 * 1024
DEFAULT_STREAM_FRAMES = 4096
DEFAULT_MAX_STREAMS = 128
STREAM_REFUSED_RETRY_AFTER = 1.0
"""Seconds a client should wait after a START refused for too many open streams."""


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class OapLimits:
    """Per-connection limits; every one is configurable, none is a protocol constant.

    ``max_streams`` counts streams whose request or reply is still open. The per-stream
    budgets count frames and (decompressed) payload bytes of one request stream: the
    codec itself never buffers a stream, but whoever consumes the events might, and a
    stream that never ends must not be able to grow without bound.
    """

    max_frame: int = MAX_FRAME
    max_streams: int = DEFAULT_MAX_STREAMS
    max_stream_frames: int = DEFAULT_STREAM_FRAMES
    max_stream_bytes: int = DEFAULT_STREAM_BYTES

    def __post_init__(self) -> None:
        if not FIXED <= self.max_frame <= MAX_LEN:
            raise ValueError(f"max_frame must be within {FIXED}..{MAX_LEN}")
        for name in ("max_streams", "max_stream_frames", "max_stream_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a server says about itself in its HELLO reply."""

    server_version: str = f"ron-omnigate/{__version__}"
    max_inflight: int = DEFAULT_MAX_STREAMS
    transports: tuple[str, ...] = ("tcp+tls",)
    supported_flags: tuple[str, ...] = SUPPORTED_FLAGS
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- pure reply builders -------------------------------------------------------------


def _echo(value: int | None) -> int:
    return 0 if value is None else value


def error_payload(err: RonError, corr_id_str: str) -> dict[str, Any]:
    """The JSON object of an error frame: the §4 envelope plus OAP's compatibility keys.

    ``error`` repeats the code for clients of the older ``{"error": ...}`` shape, and
    ``retry_after_ms`` carries ``retry_after`` because a frame has no Retry-After header.
    """
    body = err.envelope(corr_id_str)
    body["error"] = err.code.value
    if err.retry_after is not None:
        body["retry_after_ms"] = round(err.retry_after * 1000)
    return body


def error_frame(
    to: ReplyTarget, err: RonError, corr_id_str: str, *, max_frame: int = MAX_FRAME
) -> bytes:
    """``RESP|END`` with ``code`` = the HTTP status and the error envelope as payload.

    Tenant, app and corr_id are echoed from ``to`` (0 where the offending header could not
    be read), so the client can match the error to its request.
    """
    frame = Frame(
        flags=_RESP_END,
        code=err.status,
        app_proto_id=_echo(to.app_proto_id),
        tenant_id=_echo(to.tenant_id),
        corr_id=_echo(to.corr_id),
        payload=_json(error_payload(err, corr_id_str)),
    )
    return encode_frame(frame, max_frame=max_frame)


def hello_payload(info: ServerInfo, *, max_frame: int = MAX_FRAME) -> bytes:
    """The HELLO reply JSON; ``info.extra`` may add keys but never replace the core ones."""
    body: dict[str, Any] = {
        "server_version": info.server_version,
        "max_frame": max_frame,
        "max_inflight": info.max_inflight,
        "supported_flags": list(info.supported_flags),
        "oap_versions": [VERSION],
        "transports": list(info.transports),
    }
    for key, value in info.extra.items():
        body.setdefault(key, value)
    return _json(body)


def hello_frame(to: ReplyTarget, info: ServerInfo, *, max_frame: int = MAX_FRAME) -> bytes:
    """The HELLO reply: ``RESP|END``, code 0, app 0, tenant and corr_id echoed."""
    frame = Frame(
        flags=_RESP_END,
        app_proto_id=AppId.HELLO,
        tenant_id=_echo(to.tenant_id),
        corr_id=_echo(to.corr_id),
        payload=hello_payload(info, max_frame=max_frame),
    )
    return encode_frame(frame, max_frame=max_frame)


def error_from_payload(code: int, payload: bytes) -> RonError:
    """Turn a received error frame back into a :class:`RonError` (client side).

    Accepts the §4 envelope and the older ``{"error": ..., "retry_after_ms": ...}`` shape;
    when the code string is unknown the frame's status decides, so a client never fails
    on an error it cannot fully parse.
    """
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting, too
        body = None
    if not isinstance(body, dict):
        body = {}
    name = body.get("code", body.get("error"))
    known = {item.value for item in ErrorCode}
    if isinstance(name, str) and name in known:
        err_code = ErrorCode(name)
    else:
        err_code = CODE_OF_STATUS.get(code, ErrorCode.INTERNAL)
    message = body.get("message")
    if not isinstance(message, str):
        message = str(name) if name is not None else f"OAP error {code}"
    retry_ms = body.get("retry_after_ms")
    retry_after = retry_ms / 1000 if isinstance(retry_ms, int | float) else None
    return RonError(err_code, message, retry_after=retry_after)


def one_shot_reply(
    app_proto_id: int, tenant_id: int, corr_id: int, size: int
) -> tuple[bytes, bytes]:
    """The headers of a reply of ``size`` payload bytes in one frame, as
    :meth:`ServerConnection.send_response` would build them: ``RESP|START`` (empty when
    ``size`` is 0: the reply is then a bare ``RESP|END``) and the empty ``RESP|END`` that
    follows the payload. Code 0, no compression; the caller keeps ``size`` within
    ``max_frame`` and the ids within range (they come from a decoded request header).
    """
    lo, hi = tenant_id & _U64, tenant_id >> 64
    end = _HEADER.pack(FIXED, VERSION, _RESP | _END, 0, app_proto_id, lo, hi, 0, corr_id)
    if not size:
        return b"", end
    head = _HEADER.pack(FIXED + size, VERSION, _RESP | _START, 0, app_proto_id, lo, hi, 0, corr_id)
    return head, end


# --- stream bookkeeping --------------------------------------------------------------


class _Reply(Enum):
    """Where a stream's reply stands; a finished stream is simply forgotten."""

    IDLE = "idle"
    STREAMING = "streaming"


OneShot = tuple[int, int, int, int, bytes, bytes]
"""A one-shot request found by :meth:`ServerConnection.one_shot`: where its frame ends in
the buffer, app_proto_id, tenant_id, corr_id, cap, payload."""


@dataclass(slots=True)
class _Stream:
    app_proto_id: int
    tenant_id: int
    request_open: bool
    reply: _Reply = _Reply.IDLE
    frames: int = 0
    nbytes: int = 0


def _stamp(exc: OapError, frame: Frame) -> OapError:
    """Attach the offending frame's stream identity, so the error frame can echo it."""
    exc.corr_id = frame.corr_id
    exc.tenant_id = frame.tenant_id
    exc.app_proto_id = frame.app_proto_id
    exc.flags = int(frame.flags)
    return exc


def _stamp_fields(exc: OapError, fields: Fields) -> OapError:
    """:func:`_stamp` for a frame decoded as plain values."""
    exc.flags, _, exc.app_proto_id, exc.tenant_id, exc.corr_id, _, _ = fields
    return exc


def _check_optional(flags: Flags) -> int:
    value = int(flags)
    if value & ~_OPTIONAL:
        raise LocalProtocolError(
            f"only EVENT, ACK_REQ, COMP and APP_E2E may be added, not 0x{value:02x}"
        )
    return value


def _open_payload(frame: Frame, max_frame: int) -> bytes:
    """The payload as the application sees it: decompressed unless it is E2E-opaque."""
    flags = int(frame.flags)
    if flags & _COMP and not flags & _E2E:
        return decompress_payload(frame.payload, max_frame)
    return frame.payload


def _maybe_compress(payload: bytes, flags: int, max_frame: int) -> tuple[bytes, int]:
    if flags & _E2E:
        return payload, flags
    packed = compress_payload(payload, max_frame=max_frame)
    if packed is None:
        return payload, flags
    return packed, flags | _COMP


class ServerConnection:
    """The server side of one OAP/1 connection.

    Input: :meth:`receive_data` turns bytes into :data:`ServerEvent` values. Output:
    :meth:`send_response`, :meth:`ok_frames_for_stream`, :meth:`send_error` and
    :meth:`send_hello` return the bytes to write and keep the stream table in step.
    A stream is forgotten once its request has ended (or was refused) and its reply has
    ended, so ``corr_id`` values may be reused afterwards.
    """

    def __init__(self, limits: OapLimits | None = None, info: ServerInfo | None = None) -> None:
        self.limits = limits or OapLimits()
        self.info = info or ServerInfo()
        self._decoder = FrameDecoder(self.limits.max_frame)
        self._streams: dict[int, _Stream] = {}
        # corr_ids whose request was refused before its END: their non-START frames are
        # dropped silently. Insertion-ordered, so the oldest goes first when full.
        self._discard: dict[int, None] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after a fatal error: send its error frame, then close the transport."""
        return self._closed

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[ServerEvent]:
        """Feed bytes read from the client; return the events they complete."""
        if self._closed:
            return []
        decoder = self._decoder
        decoder.receive_data(data)
        events: list[ServerEvent] = []
        while True:
            try:
                fields = decoder.next_fields()
            except OapError as exc:
                if exc.fatal:
                    self._closed = True
                    events.append(ProtocolError.from_error(exc))
                    return events
                self._refuse(exc, events)
                continue
            if fields is None:
                return events
            self._on_frame(fields, events)

    def one_shot(self, data: bytes, start: int) -> OneShot | None:
        """The complete ``REQ|START|END`` frame at ``data[start:]`` if receiving it would
        do nothing but open a stream and end its request; else None.

        For a caller that answers such a request on the spot (:func:`one_shot_reply`)
        instead of feeding it to :meth:`receive_data`: a stream opened, ended and
        answered within one call leaves the stream table as if it had never been, so
        skipping the table is only right when nothing else would happen. Hence None for
        anything :meth:`receive_data` would treat otherwise: bytes still buffered before
        ``data``, a fatal state, a frame that is short or breaks a framing rule, other
        flags (COMP, EVENT...), HELLO, a busy or discarded corr_id, no room for one more
        stream, a payload over the stream budget. ``data`` itself is left alone.
        """
        if self._closed or self._decoder.buffered:
            return None
        if len(data) - start < HEADER_LEN:
            return None
        (length, ver, flags, _, app, t_lo, t_hi, cap_len, corr_id) = _HEADER.unpack_from(
            data, start
        )
        end = start + LEN_PREFIX + length
        limits = self.limits
        if (
            ver != VERSION
            or flags & KNOWN_FLAGS != _ONE_SHOT
            or app == _HELLO
            or not FIXED + cap_len <= length <= limits.max_frame
            or end > len(data)
            or length - FIXED - cap_len > limits.max_stream_bytes
            or len(self._streams) >= limits.max_streams
            or corr_id in self._streams
            or (self._discard and corr_id in self._discard)
        ):
            return None
        cap_start = start + HEADER_LEN
        tenant = t_lo | (t_hi << 64) if t_hi else t_lo
        payload_start = cap_start + cap_len
        return end, app, tenant, corr_id, data[cap_start:payload_start], data[payload_start:end]

    def _on_frame(self, fields: Fields, events: list[ServerEvent]) -> None:
        flags, _, app, tenant, corr_id, cap, payload = fields
        if app == _HELLO:
            events.append(Hello(corr_id, tenant, _FLAGS_BY_VALUE[flags], payload))
            return
        if flags & _RESP:
            self._refuse(self._error(fields, "RESP from a client"), events)
            return
        if not flags & _REQ:
            self._refuse(self._error(fields, "frame is neither REQ nor RESP"), events)
            return
        if self._discard and corr_id in self._discard:
            if not flags & _START:
                if flags & _END:
                    del self._discard[corr_id]
                return
            del self._discard[corr_id]
        stream = self._streams.get(corr_id)
        limits = self.limits
        if flags & _START:
            if stream is not None:
                reason = "duplicate START" if stream.request_open else "corr_id is busy"
                self._refuse(self._error(fields, reason), events)
                return
            if len(self._streams) >= limits.max_streams:
                err = self._error(
                    fields,
                    f"more than {limits.max_streams} open streams",
                    ErrorCode.QUOTA_EXHAUSTED,
                )
                err.retry_after = STREAM_REFUSED_RETRY_AFTER
                self._refuse(err, events)
                return
            stream = _Stream(app, tenant, True)
            self._streams[corr_id] = stream
        elif stream is None or not stream.request_open:
            what = "END" if flags & _END else "continuation"
            self._refuse(self._error(fields, f"{what} without START"), events)
            return
        elif app != stream.app_proto_id or tenant != stream.tenant_id:
            self._refuse(self._error(fields, "app or tenant changed within a stream"), events)
            return

        stream.frames += 1
        if stream.frames > limits.max_stream_frames:
            msg = f"stream exceeds {limits.max_stream_frames} frames"
            self._refuse(self._error(fields, msg), events)
            return
        if flags & _COMP and not flags & _E2E:  # E2E payloads are opaque: never opened
            try:
                payload = decompress_payload(payload, limits.max_frame)
            except OapError as exc:
                self._refuse(_stamp_fields(exc, fields), events)
                return
        stream.nbytes += len(payload)
        if stream.nbytes > limits.max_stream_bytes:
            msg = f"stream exceeds {limits.max_stream_bytes} bytes"
            self._refuse(self._error(fields, msg, ErrorCode.PAYLOAD_TOO_LARGE), events)
            return

        end = flags & _END
        if flags & _START:
            events.append(
                RequestStarted(
                    corr_id, app, tenant, _FLAGS_BY_VALUE[flags], cap, payload, bool(end)
                )
            )
        elif payload:
            events.append(RequestData(corr_id, app, tenant, _FLAGS_BY_VALUE[flags], payload))
        if end:
            stream.request_open = False
            events.append(RequestEnded(corr_id, app, tenant))

    def _error(
        self, fields: Fields, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST
    ) -> OapError:
        return _stamp_fields(OapError(code, message), fields)

    def _refuse(self, exc: OapError, events: list[ServerEvent]) -> None:
        """Report a stream-level error and stop listening to that stream's request."""
        events.append(ProtocolError.from_error(exc))
        corr_id = exc.corr_id
        if corr_id is None:  # pragma: no cover - stream errors always know their header
            return
        stream = self._streams.get(corr_id)
        if stream is not None:
            stream.request_open = False
        if not (exc.flags or 0) & _END:
            self._start_discarding(corr_id)

    def _start_discarding(self, corr_id: int) -> None:
        if corr_id not in self._discard and len(self._discard) >= self.limits.max_streams:
            del self._discard[next(iter(self._discard))]
        self._discard[corr_id] = None

    def _reply_done(self, corr_id: int, stream: _Stream) -> None:
        if stream.request_open:
            # The answer is final; whatever the client still sends for it is moot.
            stream.request_open = False
            self._start_discarding(corr_id)
        del self._streams[corr_id]

    # -- output -----------------------------------------------------------------------

    def send_response(
        self,
        to: ReplyTarget,
        payload: bytes = b"",
        *,
        end: bool = True,
        code: int = 0,
        flags: Flags = NO_FLAGS,
        compress: bool = False,
    ) -> bytes:
        """The next reply frame on ``to``'s stream.

        The first frame gets START unless it also ends the reply (a single reply is a
        bare ``RESP|END``, as in the reference vectors); ``end`` adds END and forgets the
        stream. ``flags`` may add EVENT, ACK_REQ or APP_E2E; ``compress`` sets COMP when
        zstd helps and the receiver's guard rails allow it.
        """
        if compress and payload:
            payload, wire = _maybe_compress(payload, _check_optional(flags), self.limits.max_frame)
            flags = _FLAGS_BY_VALUE[wire]
        return self._header(to, len(payload), end, code, flags) + payload

    def response_header(
        self, to: ReplyTarget, size: int, *, end: bool = False, flags: Flags = NO_FLAGS
    ) -> bytes:
        """The 37-byte header of the next reply frame, for ``size`` payload bytes that the
        caller writes right after it, unchanged (code 0, no compression).

        A storage reply is 64 KiB frames: joining header and payload would copy every
        byte once more, so the two go to the transport as they are (one ``writev``).
        The stream advances exactly as with :meth:`send_response`.
        """
        return self._header(to, size, end, 0, flags)

    def _header(self, to: ReplyTarget, size: int, end: bool, code: int, flags: Flags) -> bytes:
        """The header of the next reply frame on ``to``'s stream; advances the stream.

        Packed here rather than through a :class:`Frame` and :func:`encode_frame`, which
        range-checks every field: app, tenant and corr_id come from a decoded request
        header (in range by construction), so only the flags, ``code`` and the length
        are left to check. This runs for every reply frame.
        """
        if self._closed:
            raise LocalProtocolError("the connection hit a fatal error; only send_error")
        wire = _RESP if flags is NO_FLAGS else _RESP | _check_optional(flags)
        corr_id = _echo(to.corr_id)
        stream = self._streams.get(corr_id)
        if stream is None:
            raise LocalProtocolError(f"no request awaits a reply on corr_id {corr_id}")
        if end:
            wire |= _END
        elif stream.reply is _Reply.IDLE:
            wire |= _START
        if code and not 0 <= code <= 0xFFFF:
            raise LocalProtocolError(f"code={code!r} is outside 0..65535")
        length = FIXED + size
        if length > self.limits.max_frame:
            raise LocalProtocolError(
                f"frame len {length} exceeds max_frame {self.limits.max_frame}"
            )
        tenant = stream.tenant_id
        header = _HEADER.pack(
            length,
            VERSION,
            wire,
            code,
            stream.app_proto_id,
            tenant & _U64,
            tenant >> 64,
            0,
            corr_id,
        )
        if end:
            self._reply_done(corr_id, stream)
        else:
            stream.reply = _Reply.STREAMING
        return header

    def ok_frames_for_stream(self, to: ReplyTarget, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """A streamed success reply: ``RESP|START``, ``RESP``…, then an empty ``RESP|END``.

        This is the storage GET shape (64 KiB chunks); with no chunks at all it is a
        single empty ``RESP|END``. Lazy: each frame is built, and the stream advanced,
        as the caller iterates, so chunks can come from a file read as they are sent.
        """
        for chunk in chunks:
            yield self.send_response(to, chunk, end=False)
        yield self.send_response(to, b"", end=True)

    def send_error(self, to: ReplyTarget, err: RonError, corr_id_str: str) -> bytes:
        """An error frame for ``to`` (see :func:`error_frame`); ends that stream's reply.

        Allowed in every state, including after a fatal error, because telling the peer
        why is always right. ``corr_id_str`` is the log correlation id in the envelope.
        """
        data = error_frame(to, err, corr_id_str, max_frame=self.limits.max_frame)
        if to.corr_id is not None:
            stream = self._streams.get(to.corr_id)
            if stream is not None:
                self._reply_done(to.corr_id, stream)
        return data

    def send_hello(self, to: ReplyTarget) -> bytes:
        """The HELLO reply for ``to``, advertising :attr:`info` and our ``max_frame``."""
        return hello_frame(to, self.info, max_frame=self.limits.max_frame)


@dataclass(slots=True)
class _ClientStream:
    app_proto_id: int
    tenant_id: int
    request_open: bool
    reply: _Reply = _Reply.IDLE


class ClientConnection:
    """The client side of one OAP/1 connection.

    :meth:`start_request` and :meth:`send_data` build request frames (allocating corr_ids
    unless given one); :meth:`receive_data` turns the server's bytes into
    :data:`ClientEvent` values and checks them against the reply rules. An error frame on
    a corr_id with no pending request (servers use corr_id 0 for framing errors that came
    before any header) is still delivered, as a one-frame reply.
    """

    def __init__(self, limits: OapLimits | None = None, *, first_corr_id: int = 1) -> None:
        self.limits = limits or OapLimits()
        self._decoder = FrameDecoder(self.limits.max_frame)
        self._streams: dict[int, _ClientStream] = {}
        self._hellos: set[int] = set()
        self._next_corr_id = first_corr_id
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def next_corr_id(self) -> int:
        """A corr_id not used by any open stream of this connection."""
        while True:
            corr_id = self._next_corr_id
            self._next_corr_id = (corr_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
            if corr_id not in self._streams and corr_id not in self._hellos:
                return corr_id

    # -- output -----------------------------------------------------------------------

    def hello(self, *, corr_id: int = 0, tenant_id: int = 0, payload: bytes = b"") -> bytes:
        """A HELLO request (flags 0, app 0); the reply arrives as :class:`HelloReply`."""
        frame = Frame(NO_FLAGS, tenant_id=tenant_id, corr_id=corr_id, payload=payload)
        data = encode_frame(frame, max_frame=self.limits.max_frame)
        self._hellos.add(corr_id)
        return data

    def start_request(
        self,
        app_proto_id: int,
        payload: bytes = b"",
        *,
        tenant_id: int = 0,
        cap: bytes = b"",
        end: bool = True,
        corr_id: int | None = None,
        flags: Flags = NO_FLAGS,
        compress: bool = False,
    ) -> tuple[int, bytes]:
        """Open a request stream; returns ``(corr_id, frame bytes)``.

        ``end=True`` (the default) makes it a one-shot ``REQ|START|END``.
        """
        wire = _REQ | _START | _check_optional(flags)
        if app_proto_id == AppId.HELLO:
            raise LocalProtocolError("app 0 is HELLO; use hello()")
        if corr_id is None:
            corr_id = self.next_corr_id()
        elif corr_id in self._streams:
            raise LocalProtocolError(f"corr_id {corr_id} already has an open stream")
        if end:
            wire |= _END
        if compress and payload:
            payload, wire = _maybe_compress(payload, wire, self.limits.max_frame)
        frame = Frame(_FLAGS_BY_VALUE[wire], 0, app_proto_id, tenant_id, corr_id, cap, payload)
        data = encode_frame(frame, max_frame=self.limits.max_frame)
        self._streams[corr_id] = _ClientStream(app_proto_id, tenant_id, request_open=not end)
        return corr_id, data

    def send_data(
        self,
        corr_id: int,
        payload: bytes = b"",
        *,
        end: bool = False,
        flags: Flags = NO_FLAGS,
        compress: bool = False,
    ) -> bytes:
        """A continuation (``REQ``) or the closing ``REQ|END`` of an open request."""
        wire = _REQ | _check_optional(flags)
        stream = self._streams.get(corr_id)
        if stream is None or not stream.request_open:
            raise LocalProtocolError(f"no open request on corr_id {corr_id}")
        if end:
            wire |= _END
        if compress and payload:
            payload, wire = _maybe_compress(payload, wire, self.limits.max_frame)
        frame = Frame(
            _FLAGS_BY_VALUE[wire], 0, stream.app_proto_id, stream.tenant_id, corr_id, b"", payload
        )
        data = encode_frame(frame, max_frame=self.limits.max_frame)
        if end:
            stream.request_open = False
        return data

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[ClientEvent]:
        """Feed bytes read from the server; return the events they complete."""
        if self._closed:
            return []
        self._decoder.receive_data(data)
        events: list[ClientEvent] = []
        while True:
            try:
                frame = self._decoder.next_frame()
            except OapError as exc:
                events.append(ProtocolError.from_error(exc))
                if exc.fatal:
                    self._closed = True
                    return events
                continue
            if frame is None:
                return events
            self._on_frame(frame, events)

    def _on_frame(self, frame: Frame, events: list[ClientEvent]) -> None:
        flags = int(frame.flags)
        corr_id = frame.corr_id
        app, tenant = frame.app_proto_id, frame.tenant_id
        if not flags & _RESP or flags & _REQ:
            events.append(_client_error(frame, "a server may only send RESP frames"))
            return
        if app == _HELLO and corr_id in self._hellos and flags & _END:
            self._hellos.discard(corr_id)
            events.append(HelloReply(corr_id, tenant, frame.code, _json_object(frame.payload)))
            return
        stream = self._streams.get(corr_id)
        if stream is None:
            if flags & _END and frame.code:
                # An error about something we cannot match: still the server's last word.
                payload = frame.payload
                events.append(
                    ResponseStarted(corr_id, app, tenant, frame.code, frame.flags, payload, True)
                )
                events.append(ResponseEnded(corr_id, app, tenant, frame.code))
                return
            events.append(_client_error(frame, f"reply on corr_id {corr_id} with no request"))
            return
        if flags & _START and stream.reply is not _Reply.IDLE:
            events.append(_client_error(frame, "duplicate START in a reply"))
            return
        if stream.reply is _Reply.IDLE and not flags & (_START | _END):
            events.append(_client_error(frame, "reply continuation without START"))
            return
        try:
            payload = _open_payload(frame, self.limits.max_frame)
        except OapError as exc:
            events.append(ProtocolError.from_error(_stamp(exc, frame)))
            return
        end = bool(flags & _END)
        if stream.reply is _Reply.IDLE:
            events.append(
                ResponseStarted(corr_id, app, tenant, frame.code, frame.flags, payload, end)
            )
            stream.reply = _Reply.STREAMING
        elif payload or flags & _EVENT:
            events.append(ResponseData(corr_id, app, tenant, frame.flags, payload))
        if end:
            del self._streams[corr_id]
            events.append(ResponseEnded(corr_id, app, tenant, frame.code))


def _client_error(frame: Frame, message: str) -> ProtocolError:
    return ProtocolError.from_error(_stamp(OapError(ErrorCode.BAD_REQUEST, message), frame))


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting, too
        return {}
    return body if isinstance(body, dict) else {}
