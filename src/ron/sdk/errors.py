"""The SDK's exceptions: one base class, one subclass per envelope code.

The node answers every error with the envelope ``{"code", "message", "retryable",
"corr_id"}`` (REFERENCE §4). :func:`error_from_response` turns that envelope -- never the
message text -- into a typed exception, so callers write ``except QuotaExhausted`` instead
of comparing strings. Errors that never reached the node as an envelope (a refused
connection, a byte stream that does not hash to its address) have their own subclasses
with codes of their own (``transport``, ``integrity``) and no HTTP status.

Every exception carries the call's ``corr_id``: quote it when reporting a problem and the
operator finds the node's log line for it.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BadRequest",
    "Conflict",
    "E2EError",
    "Forbidden",
    "HeadersTooLarge",
    "IntegrityError",
    "InternalError",
    "NotFound",
    "PayloadTooLarge",
    "PaymentRequired",
    "QuotaExhausted",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "RonClientError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from_response",
    "parse_retry_after",
]

# Statuses a proxy or load balancer may send without an envelope and that are worth
# retrying; with an envelope, its own ``retryable`` field decides.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RonClientError(Exception):
    """Base class of every error the SDK raises.

    ``code`` is the envelope's machine-readable code (or ``transport`` / ``integrity`` /
    ``e2e`` for errors made on this side), ``status`` the HTTP status when there was one,
    ``corr_id`` the correlation id the call was sent with, ``retryable`` whether trying
    again later may succeed, ``retry_after`` the server's hint in seconds (if any) and
    ``envelope`` the whole decoded error body (empty when there was none).
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        corr_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        envelope: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.corr_id = corr_id
        self.retryable = retryable
        self.retry_after = retry_after
        self.envelope: dict[str, Any] = dict(envelope or {})

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        corr = f" (corr_id {self.corr_id})" if self.corr_id else ""
        return f"{where}{self.code}: {self.message}{corr}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"corr_id={self.corr_id!r}, message={self.message!r})"
        )


class BadRequest(RonClientError):
    default_code = "bad_request"


class Unauthorized(RonClientError):
    default_code = "unauthorized"


class PaymentRequired(RonClientError):
    """The object requires payment; the price fields say how much and to whom."""

    default_code = "payment_required"

    @property
    def currency(self) -> str | None:
        return _str_or_none(self.envelope.get("currency"))

    @property
    def price_model(self) -> str | None:
        return _str_or_none(self.envelope.get("price_model"))

    @property
    def price(self) -> float | None:
        value = self.envelope.get("price")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    @property
    def wallet(self) -> str | None:
        return _str_or_none(self.envelope.get("wallet"))


class Forbidden(RonClientError):
    default_code = "forbidden"


class NotFound(RonClientError):
    default_code = "not_found"


class RequestTimeout(RonClientError):
    default_code = "timeout"


class Conflict(RonClientError):
    """For example an ACK with a stale receipt: the lease expired and moved on."""

    default_code = "conflict"

    @property
    def stale(self) -> list[int]:
        """Positions (in the call's receipt list) of the receipts that were stale."""
        value = self.envelope.get("stale")
        if isinstance(value, list):
            return [i for i in value if isinstance(i, int) and not isinstance(i, bool)]
        return []


class PayloadTooLarge(RonClientError):
    default_code = "payload_too_large"


class UnsupportedMediaType(RonClientError):
    default_code = "unsupported_media_type"


class RangeNotSatisfiable(RonClientError):
    default_code = "range_not_satisfiable"


class QuotaExhausted(RonClientError):
    """429: the tenant's bucket is empty; ``retry_after`` says when it has a token."""

    default_code = "quota_exhausted"


class HeadersTooLarge(RonClientError):
    default_code = "headers_too_large"


class InternalError(RonClientError):
    default_code = "internal"


class Unavailable(RonClientError):
    """503 (and the 502/504 upstream codes): the node cannot serve this right now."""

    default_code = "unavailable"


class TransportError(RonClientError):
    """No answer: the connection was refused, reset, timed out or closed mid-response."""

    default_code = "transport"


class IntegrityError(RonClientError):
    """Bytes that do not hash to their address. Nothing of them was kept."""

    default_code = "integrity"


class E2EError(RonClientError):
    """A sealed payload could not be opened: tampered, not for this key, or not sealed
    by the expected sender. Deliberately vague: it never says which check failed."""

    default_code = "e2e"


_BY_CODE: dict[str, type[RonClientError]] = {
    "bad_request": BadRequest,
    "length_required": BadRequest,
    "unauthorized": Unauthorized,
    "payment_required": PaymentRequired,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "timeout": RequestTimeout,
    "conflict": Conflict,
    "payload_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "range_not_satisfiable": RangeNotSatisfiable,
    "quota_exhausted": QuotaExhausted,
    "headers_too_large": HeadersTooLarge,
    "internal": InternalError,
    "upstream_unavailable": Unavailable,
    "unavailable": Unavailable,
    "upstream_timeout": Unavailable,
}

_BY_STATUS: dict[int, type[RonClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: PaymentRequired,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    411: BadRequest,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    416: RangeNotSatisfiable,
    429: QuotaExhausted,
    431: HeadersTooLarge,
    500: InternalError,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent
    or unparseable (a garbled hint must not turn into a tight retry loop or a crash)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def decode_envelope(body: bytes) -> dict[str, Any]:
    """The error envelope in ``body``, or ``{}`` when the body is not one."""
    if not body or len(body) > 64 * 1024:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting, too
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("code"), str):
        return {}
    return data


def error_from_response(
    status: int | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    corr_id: str | None,
) -> RonClientError:
    """The typed exception for an error response.

    The envelope's ``code`` picks the class (the status only when there is no envelope,
    e.g. an HTML page from a proxy); the envelope's ``retryable`` is authoritative.
    """
    env = decode_envelope(body)
    code = env.get("code")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, RonClientError) if status is not None else RonClientError
    retryable_field = env.get("retryable")
    retryable = (
        retryable_field if isinstance(retryable_field, bool) else status in RETRYABLE_STATUSES
    )
    message = env.get("message")
    if not isinstance(message, str):
        message = f"HTTP {status} without an error envelope"
    return cls(
        message,
        code=code if isinstance(code, str) else None,
        status=status,
        corr_id=corr_id,
        retryable=retryable,
        retry_after=parse_retry_after(headers.get("retry-after")),
        envelope=env,
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
