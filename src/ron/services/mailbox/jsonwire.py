"""The mailbox's JSON shapes, shared by every front end (HTTP gateway, OAP server).

One definition of how a delivery, a dead letter, an outgoing message and a receipt list
look in JSON keeps the two doors from drifting apart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.strictjson import ENCODER, parse_object
from ron.services.mailbox.model import (
    MAX_BATCH,
    DeadLetter,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
)

__all__ = [
    "batch_from_body",
    "dead_letter_json",
    "deliveries_body",
    "delivery_json",
    "outgoing_from_json",
    "receipts_from_json",
    "send_result_body",
    "send_results_body",
]

_MESSAGES = frozenset({"messages"})
_BOOL = {False: "false", True: "true"}


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "msg_id": d.msg_id,
        "receipt": d.receipt,
        "payload_b64": base64.b64encode(d.payload).decode("ascii"),
        "headers": dict(d.headers),
        "delivery_count": d.delivery_count,
        "enqueued_ms": d.enqueued_ms,
    }


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    return {
        "msg_id": d.msg_id,
        "payload_b64": base64.b64encode(d.payload).decode("ascii"),
        "headers": dict(d.headers),
        "delivery_count": d.delivery_count,
        "enqueued_ms": d.enqueued_ms,
        "dead_ms": d.dead_ms,
    }


def outgoing_from_json(item: object) -> Outgoing:
    if not isinstance(item, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "each message must be an object")
    unknown = set(item) - {"payload_b64", "headers", "idempotency_key"}
    if unknown:
        raise RonError(ErrorCode.BAD_REQUEST, f"unknown key {sorted(unknown)[0]!r} in a message")
    raw = item.get("payload_b64")
    if not isinstance(raw, str):
        raise RonError(ErrorCode.BAD_REQUEST, "payload_b64 must be a base64 string")
    try:
        payload = _b64decode(raw)
    except ValueError:
        raise RonError(ErrorCode.BAD_REQUEST, "payload_b64 is not valid base64") from None
    headers = item.get("headers", {})
    if not isinstance(headers, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "headers must be an object of strings")
    key = item.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        raise RonError(ErrorCode.BAD_REQUEST, "idempotency_key must be a string")
    return Outgoing(payload, headers, key)


def batch_from_body(raw: bytes) -> list[Outgoing]:
    """A batch-send body, ``{"messages": [...]}``, parsed strictly into entries."""
    items = parse_object(raw, _MESSAGES).get("messages")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise RonError(ErrorCode.BAD_REQUEST, f"messages must be a list of 1..{MAX_BATCH}")
    return [outgoing_from_json(item) for item in items]


def _result_text(r: SendResult) -> str:
    return f'{{"msg_id":"{r.msg_id}","duplicate":{_BOOL[r.duplicate]}}}'


def send_result_body(result: SendResult) -> bytes:
    """The single-send reply, ``{"msg_id", "duplicate"}``."""
    return _result_text(result).encode()


def send_results_body(results: Sequence[SendResult]) -> bytes:
    """The batch-send reply, ``{"messages": [{"msg_id", "duplicate"}...]}``."""
    return ('{"messages":[' + ",".join(_result_text(r) for r in results) + "]}").encode()


def _delivery_text(d: Delivery) -> str:
    # The shape of delivery_json rendered by hand: msg ids, receipts and base64 need no
    # escaping, and only the headers (free text) go through the encoder.
    headers = ENCODER.encode(dict(d.headers)) if d.headers else "{}"
    return (
        f'{{"msg_id":"{d.msg_id}","receipt":"{d.receipt}",'
        f'"payload_b64":"{base64.b64encode(d.payload).decode("ascii")}",'
        f'"headers":{headers},"delivery_count":{int(d.delivery_count)},'
        f'"enqueued_ms":{int(d.enqueued_ms)}}}'
    )


def deliveries_body(got: Sequence[Delivery], acked: Settled | None = None) -> bytes:
    """The receive reply, ``{"messages": [delivery...]}``, byte for byte as
    ``render_json({"messages": [delivery_json(d) ...]})`` would render it; a receive
    that acknowledged receipts first adds ``"acked"`` and ``"gone"`` as an ack would."""
    messages = '{"messages":[' + ",".join(_delivery_text(d) for d in got) + "]"
    if acked is not None:
        messages += f',"acked":{int(acked.done)},"gone":{int(acked.gone)}'
    return (messages + "}").encode()


def _b64decode(text: str) -> bytes:
    """``base64.b64decode(text, validate=True)``, faster for canonical input.

    Strict mode accepts only canonical base64 (the alphabet, padding at the end), which
    validate=True accepts and decodes the same way; anything strict mode refuses gets
    the reference decoder's verdict, so no input is judged differently. Saves the
    reference's regex pass over every payload.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        return base64.b64decode(text, validate=True)


def receipts_from_json(body: dict[str, Any]) -> list[str]:
    receipts = body.get("receipts")
    if (
        not isinstance(receipts, list)
        or not 1 <= len(receipts) <= MAX_BATCH
        or not all(isinstance(r, str) for r in receipts)
    ):
        raise RonError(ErrorCode.BAD_REQUEST, f"receipts must be a list of 1..{MAX_BATCH} strings")
    return receipts
