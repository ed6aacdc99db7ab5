"""Errors of the OAP/1 layer.

A peer's mistake becomes an :class:`OapError`: a :class:`~ron.proto.envelope.RonError`, so
the one envelope builder turns it into the error frame the peer sees, with the HTTP status
as the frame's ``code``. It also says whether the connection can go on (``fatal``) and, when
the frame header was readable, which stream it concerns, so the reply can echo tenant, app
and corr_id.

Our own mistakes (encoding an out-of-range field, replying on a finished stream) are
:class:`LocalProtocolError`: a bug on this side must never be reported to the peer as if
the peer had sent something wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ron.proto.envelope import ErrorCode, RonError

if TYPE_CHECKING:
    from ron.proto.oap.frame import Frame


class OapError(RonError):
    """The peer broke the OAP/1 contract; ``status`` is what the error frame carries.

    ``fatal`` means the byte stream can no longer be trusted (framing lost, wrong version):
    send the error frame, then close. A non-fatal error concerns one stream only;
    ``corr_id``, ``tenant_id``, ``app_proto_id`` and ``flags`` describe the offending frame
    when its header could be read (``None`` otherwise).
    ``frames`` holds the frames :meth:`FrameDecoder.feed` decoded from the same chunk
    before this error, so no well-formed frame that preceded it is lost.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        corr_id: int | None = None,
        tenant_id: int | None = None,
        app_proto_id: int | None = None,
        flags: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message, retry_after=retry_after)
        self.fatal = fatal
        self.corr_id = corr_id
        self.tenant_id = tenant_id
        self.app_proto_id = app_proto_id
        self.flags = flags
        self.frames: tuple[Frame, ...] = ()

    def clone(self) -> OapError:
        """A fresh copy, so re-raising a sticky error never grows a shared traceback."""
        return OapError(
            self.code,
            self.message,
            fatal=self.fatal,
            corr_id=self.corr_id,
            tenant_id=self.tenant_id,
            app_proto_id=self.app_proto_id,
            flags=self.flags,
            retry_after=self.retry_after,
        )

    def __repr__(self) -> str:
        return (
            f"OapError({self.code.value!r}, {self.message!r}, status={self.status}, "
            f"fatal={self.fatal}, corr_id={self.corr_id})"
        )


class LocalProtocolError(ValueError):
    """This side tried to emit something OAP/1 forbids; a bug here, not in the peer."""
