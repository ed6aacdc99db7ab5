"""The one error envelope shared by HTTP bodies, OAP error frames and IPC replies.

Errors are values with a code, not strings to be parsed: every layer raises
:class:`RonError` with an :class:`ErrorCode`, and exactly one builder turns it into the
``{"code", "message", "retryable", "corr_id"}`` JSON object clients see.
"""

from __future__ import annotations

import random
import re
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable machine-readable error codes (REFERENCE §4)."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    PAYMENT_REQUIRED = "payment_required"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    CONFLICT = "conflict"
    LENGTH_REQUIRED = "length_required"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    QUOTA_EXHAUSTED = "quota_exhausted"
    HEADERS_TOO_LARGE = "headers_too_large"
    INTERNAL = "internal"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UNAVAILABLE = "unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"


STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PAYMENT_REQUIRED: 402,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TIMEOUT: 408,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RANGE_NOT_SATISFIABLE: 416,
    ErrorCode.QUOTA_EXHAUSTED: 429,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}

CODE_OF_STATUS: dict[int, ErrorCode] = {status: code for code, status in STATUS_OF.items()}

RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.TIMEOUT,
        ErrorCode.QUOTA_EXHAUSTED,
        ErrorCode.INTERNAL,
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.UNAVAILABLE,
        ErrorCode.UPSTREAM_TIMEOUT,
    }
)

_SANE_CORR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RonError(Exception):
    """An error that crosses a boundary (HTTP, OAP, IPC) as an envelope.

    ``retry_after`` is in seconds and becomes the ``Retry-After`` header or
    ``retry_after_ms`` where the transport has one; ``extra`` holds additional
    envelope fields (for example the price fields of ``payment_required``).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.retry_after = retry_after
        self.extra = dict(extra or {})

    @property
    def status(self) -> int:
        return STATUS_OF[self.code]

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def envelope(self, corr_id: str) -> dict[str, Any]:
        return envelope(self.code, self.message, corr_id, extra=self.extra)

    def __repr__(self) -> str:
        return f"RonError({self.code.value!r}, {self.message!r})"


def envelope(
    code: ErrorCode,
    message: str,
    corr_id: str,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the error envelope; ``retryable`` is derived from the code, never chosen."""
    body: dict[str, Any] = {
        "code": code.value,
        "message": message,
        "retryable": code in RETRYABLE,
        "corr_id": corr_id,
    }
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return body


def new_corr_id() -> str:
    """A fresh correlation id: 128 random bits as hex, safe in headers and logs.

    Not from the OS's secret source: a correlation id is echoed to the client and
    logged, never trusted, so it only has to be unique, and one is made per request
    (``secrets`` cost a syscall and a few layers each time). ``random`` reseeds itself
    in every forked child, so worker processes do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


def sane_corr_id(candidate: str | None) -> str:
    """Echo a client's correlation id when it is sane, else make one (REFERENCE §4)."""
    if candidate is not None and _SANE_CORR_ID.fullmatch(candidate):
        return candidate
    return new_corr_id()
