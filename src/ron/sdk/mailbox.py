"""Mailbox value types and wire parsing for the SDK (docs/specs/HTTP-API.md, "Mailbox").

Plain frozen dataclasses built from the node's JSON replies, plus an incremental
Server-Sent Events parser for subscriptions. Nothing here does I/O, so the sync and the
async client share all of it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ron.sdk.errors import RonClientError, error_from_response

__all__ = [
    "DeadLetter",
    "DeadLetterPage",
    "Message",
    "SendResult",
    "Settled",
    "SseEvent",
    "SseParser",
    "TopicStats",
    "receipts_of",
]


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where a sent message went. ``duplicate`` is true when the node had already stored
    a message with this idempotency key (a retried send): nothing new was stored."""

    msg_id: str
    duplicate: bool
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A leased message. Settle it with ``ack``/``nack`` (by message or by receipt)."""

    topic: str
    msg_id: str
    receipt: str = field(repr=False)  # a bearer secret for the lease: kept out of logs
    payload: bytes = field(repr=False)
    headers: Mapping[str, str]
    delivery_count: int
    enqueued_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """An ack/nack/extend outcome: how many receipts took effect, how many were gone."""

    done: int
    gone: int


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    depth: int
    in_flight: int
    delayed: int
    dlq_depth: int
    oldest_age_s: float
    max_deliveries: int | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    msg_id: str
    payload: bytes = field(repr=False)
    headers: Mapping[str, str]
    delivery_count: int
    enqueued_ms: int | None
    dead_ms: int | None


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    messages: list[DeadLetter]
    next_cursor: str | None


class ProtocolMismatch(RonClientError):
    """The node answered with JSON of an unexpected shape (a version mismatch)."""

    default_code = "protocol"


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolMismatch(f"reply field {name!r} is missing or has the wrong type")
    return value


def _opt_int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _b64(data: Mapping[str, Any], name: str) -> bytes:
    text = _field(data, name, str)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolMismatch(f"reply field {name!r} is not base64") from None


def _headers(data: Mapping[str, Any]) -> dict[str, str]:
    raw = data.get("headers") or {}
    if not isinstance(raw, dict):
        raise ProtocolMismatch("reply field 'headers' is not an object")
    return {str(k): str(v) for k, v in raw.items()}


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting, too
        raise ProtocolMismatch("reply is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolMismatch("reply is not a JSON object")
    return data


def send_result(data: Mapping[str, Any], key: str | None) -> SendResult:
    return SendResult(
        msg_id=_field(data, "msg_id", str),
        duplicate=bool(data.get("duplicate", False)),
        idempotency_key=key,
    )


def message(topic: str, data: Mapping[str, Any]) -> Message:
    return Message(
        topic=topic,
        msg_id=_field(data, "msg_id", str),
        receipt=_field(data, "receipt", str),
        payload=_b64(data, "payload_b64"),
        headers=_headers(data),
        delivery_count=_field(data, "delivery_count", int),
        enqueued_ms=_opt_int(data, "enqueued_ms"),
    )


def messages(topic: str, data: Mapping[str, Any]) -> list[Message]:
    return [message(topic, item) for item in _field(data, "messages", list)]


def settled(data: Mapping[str, Any], done_key: str) -> Settled:
    return Settled(done=_field(data, done_key, int), gone=int(data.get("gone", 0)))


def topic_stats(data: Mapping[str, Any]) -> TopicStats:
    return TopicStats(
        topic=_field(data, "topic", str),
        depth=_field(data, "depth", int),
        in_flight=_field(data, "in_flight", int),
        delayed=int(data.get("delayed", 0)),
        dlq_depth=_field(data, "dlq_depth", int),
        oldest_age_s=float(data.get("oldest_age_s", 0.0)),
        max_deliveries=_opt_int(data, "max_deliveries"),
        raw=dict(data),
    )


def dead_letter_page(data: Mapping[str, Any]) -> DeadLetterPage:
    letters = [
        DeadLetter(
            msg_id=_field(item, "msg_id", str),
            payload=_b64(item, "payload_b64"),
            headers=_headers(item),
            delivery_count=_field(item, "delivery_count", int),
            enqueued_ms=_opt_int(item, "enqueued_ms"),
            dead_ms=_opt_int(item, "dead_ms"),
        )
        for item in _field(data, "messages", list)
    ]
    cursor = data.get("next_cursor")
    return DeadLetterPage(letters, cursor if isinstance(cursor, str) else None)


def receipts_of(items: str | Message | Iterable[str | Message]) -> list[str]:
    """Receipt handles from a receipt, a message, or a mix of both."""
    if isinstance(items, str | Message):
        items = [items]
    out = [item.receipt if isinstance(item, Message) else item for item in items]
    if not out:
        raise ValueError("no receipts given")
    for receipt in out:
        if not isinstance(receipt, str):
            raise TypeError("receipts are strings or Message objects")
    return out


# --- Server-Sent Events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None


class SseParser:
    """Incremental ``text/event-stream`` parser (the WHATWG rules the node relies on:
    ``event:``, ``data:`` and ``id:`` fields, ``:`` comments, a blank line dispatches).

    Lines are bounded: a stream that never ends a line cannot grow memory without limit.
    """

    MAX_LINE = 4 * 1024 * 1024  # a delivery of a 1 MiB payload is ~1.4 MB of base64

    def __init__(self) -> None:
        self._buf = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        out: list[SseEvent] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.MAX_LINE:
                    raise ProtocolMismatch("event stream line exceeds the size limit")
                return out
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def event_to_message(topic: str, event: SseEvent, *, corr_id: str) -> Message | None:
    """A ``message`` event as a Message; an ``error`` event raised as its typed error."""
    if event.event == "message":
        return message(topic, json_object(event.data.encode()))
    if event.event == "error":
        raise error_from_response(None, {}, event.data.encode(), corr_id=corr_id)
    return None
