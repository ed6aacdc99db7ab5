"""Events the OAP/1 connection state machines hand to the code that drives them.

Each event names its stream by ``corr_id`` and carries the stream's ``tenant_id`` and
``app_proto_id``, so any event can be passed straight back as the ``to`` of a reply
builder. Payloads arrive decompressed unless APP_E2E is set (then they are opaque and
untouched). ``repr`` never shows payload or cap bytes, only their lengths: caps are
bearer secrets and E2E payloads must never reach a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from ron.proto.oap.errors import OapError
from ron.proto.oap.frame import Flags, flag_names


class ReplyTarget(Protocol):
    """Whatever identifies the stream a reply goes to: a frame, an event, or an error."""

    @property
    def corr_id(self) -> int | None: ...

    @property
    def tenant_id(self) -> int | None: ...

    @property
    def app_proto_id(self) -> int | None: ...


def _safe_repr(obj: object) -> str:
    parts: list[str] = []
    for item in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, item.name)
        if isinstance(value, bytes | bytearray | memoryview):
            parts.append(f"{item.name}_len={len(value)}")
        elif item.name == "flags":
            parts.append(f"flags={flag_names(value)}")
        else:
            parts.append(f"{item.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class _SafeRepr:
    __slots__ = ()

    def __repr__(self) -> str:
        return _safe_repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class Hello(_SafeRepr):
    """A HELLO (app 0, any flags): answer with :meth:`ServerConnection.send_hello`."""

    corr_id: int
    tenant_id: int
    flags: Flags
    payload: bytes
    app_proto_id: int = 0  # HELLO is app 0 by definition


@dataclass(frozen=True, slots=True, repr=False)
class RequestStarted(_SafeRepr):
    """``REQ|START`` opened a request stream; ``end`` is true for a one-shot request.

    ``cap`` is the capability presented with the request (empty when none).
    """

    corr_id: int
    app_proto_id: int
    tenant_id: int
    flags: Flags
    cap: bytes
    payload: bytes
    end: bool

    @property
    def e2e(self) -> bool:
        return bool(self.flags & Flags.APP_E2E)


@dataclass(frozen=True, slots=True, repr=False)
class RequestData(_SafeRepr):
    """A non-empty continuation of an open request stream."""

    corr_id: int
    app_proto_id: int
    tenant_id: int
    flags: Flags
    payload: bytes

    @property
    def e2e(self) -> bool:
        return bool(self.flags & Flags.APP_E2E)


@dataclass(frozen=True, slots=True, repr=False)
class RequestEnded(_SafeRepr):
    """The request stream got its END (always follows the frame that carried it)."""

    corr_id: int
    app_proto_id: int
    tenant_id: int


@dataclass(frozen=True, slots=True, repr=False)
class ResponseStarted(_SafeRepr):
    """The first reply frame of a stream; ``code`` is 0 or an HTTP status.

    ``end`` is true for a single-frame reply (``RESP|END`` or ``RESP|START|END``).
    """

    corr_id: int
    app_proto_id: int
    tenant_id: int
    code: int
    flags: Flags
    payload: bytes
    end: bool


@dataclass(frozen=True, slots=True, repr=False)
class ResponseData(_SafeRepr):
    """A reply continuation; with EVENT set it is a pushed item (e.g. a subscription)."""

    corr_id: int
    app_proto_id: int
    tenant_id: int
    flags: Flags
    payload: bytes

    @property
    def is_event(self) -> bool:
        return bool(self.flags & Flags.EVENT)


@dataclass(frozen=True, slots=True, repr=False)
class ResponseEnded(_SafeRepr):
    """The reply stream got its END; ``code`` is that frame's code."""

    corr_id: int
    app_proto_id: int
    tenant_id: int
    code: int


@dataclass(frozen=True, slots=True, repr=False)
class HelloReply(_SafeRepr):
    """The server's HELLO answer; ``info`` is its JSON object (empty if unreadable).

    Clients tolerate missing and extra keys, so nothing in ``info`` is required.
    """

    corr_id: int
    tenant_id: int
    code: int
    info: Mapping[str, Any] = field(default_factory=dict)
    app_proto_id: int = 0  # HELLO is app 0 by definition


@dataclass(frozen=True, slots=True, repr=False)
class ProtocolError(_SafeRepr):
    """The peer broke the protocol; reply with ``send_error(event, event.error, ...)``.

    ``fatal``: send that error frame, then close the connection; the state machine
    produces no further events. Otherwise only the stream ``corr_id`` is refused: a handler
    still working on that corr_id should be cancelled, since the error frame ends its
    reply (a later ``send_response`` on it raises :class:`LocalProtocolError`).
    ``corr_id`` is ``None`` when the error came before a header could be read.
    """

    error: OapError
    corr_id: int | None
    tenant_id: int | None
    app_proto_id: int | None
    fatal: bool

    @property
    def status(self) -> int:
        return self.error.status

    @classmethod
    def from_error(cls, error: OapError) -> ProtocolError:
        return cls(
            error=error,
            corr_id=error.corr_id,
            tenant_id=error.tenant_id,
            app_proto_id=error.app_proto_id,
            fatal=error.fatal,
        )


ServerEvent = Hello | RequestStarted | RequestData | RequestEnded | ProtocolError
"""What :meth:`ServerConnection.receive_data` returns."""
ClientEvent = HelloReply | ResponseStarted | ResponseData | ResponseEnded | ProtocolError
"""What :meth:`ClientConnection.receive_data` returns."""
