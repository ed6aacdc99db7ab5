"""The mailbox's value types and input rules, shared by the store, the service, its IPC
proxy and every front end (HTTP now, OAP later).

Validation lives here, next to the types, so that every door into the mailbox refuses
the same things with the same codes: a topic that could not be a URL segment, a header
that could smuggle a line break, a payload over the cap (413).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ron.kernel.config import MAILBOX_TOPIC_RE
from ron.proto.envelope import ErrorCode, RonError

TOPIC_RE = re.compile(MAILBOX_TOPIC_RE)
HEADER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Printable ASCII plus space: header values end up in HTTP headers and SSE lines.
HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]{0,256}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")
MSG_ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

MAX_HEADERS = 16
MAX_HEADER_BYTES = 2048
MAX_BATCH = 100
MAX_RECEIVE = 100
# What one entry may add to a message's encoded size beyond its payload, headers and
# key (map keys and length prefixes): used to keep a batch inside one IPC frame.
ENTRY_OVERHEAD = 48


def check_topic(topic: object) -> str:
    """A topic is 1-128 characters of ``[A-Za-z0-9._-]``: safe in URLs, logs and metrics."""
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise RonError(
            ErrorCode.BAD_REQUEST, "topic must be 1-128 characters of letters, digits, . _ -"
        )
    return topic


def check_msg_id(msg_id: object) -> str:
    if not isinstance(msg_id, str) or not MSG_ID_RE.fullmatch(msg_id):
        raise RonError(ErrorCode.BAD_REQUEST, "msg_id is not a ULID")
    return msg_id


def check_headers(headers: object) -> dict[str, str]:
    """Small string headers: at most 16, lowercase names, printable values, 2 KiB in all."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise RonError(ErrorCode.BAD_REQUEST, "headers must be an object of strings")
    if len(headers) > MAX_HEADERS:
        raise RonError(ErrorCode.BAD_REQUEST, f"at most {MAX_HEADERS} headers")
    out: dict[str, str] = {}
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
            raise RonError(
                ErrorCode.BAD_REQUEST,
                "header names are 1-64 characters of lowercase letters, digits, . _ -",
            )
        if not isinstance(value, str) or not HEADER_VALUE_RE.fullmatch(value):
            raise RonError(
                ErrorCode.BAD_REQUEST, "header values are at most 256 printable ASCII characters"
            )
        total += len(name) + len(value)
        out[name] = value
    if total > MAX_HEADER_BYTES:
        raise RonError(ErrorCode.BAD_REQUEST, f"headers exceed {MAX_HEADER_BYTES} bytes")
    return out


def check_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise RonError(
            ErrorCode.BAD_REQUEST, "idempotency key must be 1-128 visible ASCII characters"
        )
    return key


def check_count(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be an integer {low}..{high}")
    return value


def check_seconds(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be a number {low:g}..{high:g}")
    return float(value)


@dataclass(frozen=True)
class Outgoing:
    """One message to send: opaque payload bytes, small headers, optional dedup key."""

    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None

    def cost(self) -> int:
        """Upper bound of what this entry adds to an encoded request."""
        head = sum(len(k) + len(v) + 8 for k, v in self.headers.items())
        return len(self.payload) + head + len(self.idempotency_key or "") + ENTRY_OVERHEAD

    def to_wire(self) -> dict[str, Any]:
        return {"p": self.payload, "h": dict(self.headers), "k": self.idempotency_key}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Outgoing:
        payload = data.get("p")
        if not isinstance(payload, bytes):
            raise RonError(ErrorCode.BAD_REQUEST, "payload must be bytes")
        return cls(payload, check_headers(data.get("h")), check_idempotency_key(data.get("k")))


def entry_budget(max_payload: int) -> int:
    """The most one send may cost: a full payload with the largest headers and key.

    A batch gets the same budget in all, so that any request fits in one IPC frame
    (1 MiB + 4 KiB) and one OAP frame's worth of work, whatever its shape.
    """
    return max_payload + MAX_HEADER_BYTES + MAX_HEADERS * 8 + 128 + ENTRY_OVERHEAD


def check_batch(entries: Sequence[Outgoing], max_payload: int) -> None:
    """1..100 entries; each payload within ``max_payload``, the batch within one budget."""
    if not 1 <= len(entries) <= MAX_BATCH:
        raise RonError(ErrorCode.BAD_REQUEST, f"a batch holds 1..{MAX_BATCH} messages")
    total = 0
    for entry in entries:
        if len(entry.payload) > max_payload:
            raise RonError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"payload exceeds the {max_payload}-byte cap"
            )
        check_headers(entry.headers)
        check_idempotency_key(entry.idempotency_key)
        total += entry.cost()
    if total > entry_budget(max_payload):
        raise RonError(ErrorCode.PAYLOAD_TOO_LARGE, f"the batch exceeds {max_payload} bytes in all")


@dataclass(frozen=True)
class SendResult:
    """The id a send was given; ``duplicate`` when an idempotency key matched."""

    msg_id: str
    duplicate: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"msg_id": self.msg_id, "duplicate": self.duplicate}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> SendResult:
        return cls(str(data["msg_id"]), bool(data["duplicate"]))


@dataclass(frozen=True)
class Delivery:
    """A leased message: ``receipt`` acks, nacks or extends exactly this lease."""

    msg_id: str
    topic: str
    payload: bytes
    headers: Mapping[str, str]
    delivery_count: int
    enqueued_ms: int
    receipt: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "topic": self.topic,
            "payload": self.payload,
            "headers": dict(self.headers),
            "delivery_count": self.delivery_count,
            "enqueued_ms": self.enqueued_ms,
            "receipt": self.receipt,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(
            msg_id=str(data["msg_id"]),
            topic=str(data["topic"]),
            payload=bytes(data["payload"]),
            headers=dict(data["headers"]),
            delivery_count=int(data["delivery_count"]),
            enqueued_ms=int(data["enqueued_ms"]),
            receipt=str(data["receipt"]),
        )


@dataclass(frozen=True)
class DeadLetter:
    """A message in a topic's dead-letter queue."""

    msg_id: str
    topic: str
    payload: bytes
    headers: Mapping[str, str]
    delivery_count: int
    enqueued_ms: int
    dead_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "topic": self.topic,
            "payload": self.payload,
            "headers": dict(self.headers),
            "delivery_count": self.delivery_count,
            "enqueued_ms": self.enqueued_ms,
            "dead_ms": self.dead_ms,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> DeadLetter:
        return cls(
            msg_id=str(data["msg_id"]),
            topic=str(data["topic"]),
            payload=bytes(data["payload"]),
            headers=dict(data["headers"]),
            delivery_count=int(data["delivery_count"]),
            enqueued_ms=int(data["enqueued_ms"]),
            dead_ms=int(data["dead_ms"]),
        )


@dataclass(frozen=True)
class Settled:
    """What an ack, nack or extend did: ``done`` receipts applied, ``gone`` ones whose
    message no longer exists (already acked or deleted: a retried ack is harmless)."""

    done: int
    gone: int

    def to_wire(self) -> dict[str, Any]:
        return {"done": self.done, "gone": self.gone}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Settled:
        return cls(int(data["done"]), int(data["gone"]))


@dataclass(frozen=True)
class TopicStats:
    """A topic at one instant. ``depth`` counts messages a receive could lease now."""

    topic: str
    depth: int
    in_flight: int
    delayed: int
    dlq_depth: int
    oldest_age_s: float
    max_deliveries: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "depth": self.depth,
            "in_flight": self.in_flight,
            "delayed": self.delayed,
            "dlq_depth": self.dlq_depth,
            "oldest_age_s": self.oldest_age_s,
            "max_deliveries": self.max_deliveries,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TopicStats:
        return cls(
            topic=str(data["topic"]),
            depth=int(data["depth"]),
            in_flight=int(data["in_flight"]),
            delayed=int(data["delayed"]),
            dlq_depth=int(data["dlq_depth"]),
            oldest_age_s=float(data["oldest_age_s"]),
            max_deliveries=int(data["max_deliveries"]),
        )


@dataclass(frozen=True)
class SubscriptionPoll:
    """One step of a subscription: new deliveries, and which of the receipts the
    subscriber still holds are live leases (the rest were acked, nacked or expired)."""

    deliveries: list[Delivery]
    live: list[str]

    def to_wire(self) -> dict[str, Any]:
        return {"deliveries": [d.to_wire() for d in self.deliveries], "live": self.live}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> SubscriptionPoll:
        return cls([Delivery.from_wire(d) for d in data["deliveries"]], list(data["live"]))


@dataclass(frozen=True)
class DeadLetterPage:
    """A page of a dead-letter queue; ``next_cursor`` is None on the last page."""

    letters: list[DeadLetter]
    next_cursor: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"letters": [d.to_wire() for d in self.letters], "next_cursor": self.next_cursor}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> DeadLetterPage:
        cursor = data.get("next_cursor")
        return cls(
            [DeadLetter.from_wire(d) for d in data["letters"]],
            None if cursor is None else str(cursor),
        )
