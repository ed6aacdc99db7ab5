"""Mailbox over OAP/1 (app 0x0201): the op JSON of docs/specs/HTTP-API.md, one reply frame.

The same MailboxAPI the HTTP gateway calls, with the same JSON shapes
(:mod:`ron.services.mailbox.jsonwire`), so the two doors accept and refuse the same
things. Payloads arrive as ``text`` (UTF-8) or ``payload_b64`` and are never inspected.
``subscribe`` over OAP needs the connection to dispatch at START and push EVENT frames;
until then it is refused with 400 and clients long-poll with ``recv`` + ``wait_ms``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

from ron.auth.guard import Guard
from ron.auth.verifier import Grant
from ron.proto.envelope import ErrorCode, RonError
from ron.services.mailbox.api import MailboxAPI, follow
from ron.services.mailbox.jsonwire import (
    dead_letter_json,
    delivery_json,
    outgoing_from_json,
    receipts_from_json,
)
from ron.services.omnigate.apps import OapRequest, Reply, json_request

MAX_WAIT_MS = 20_000


def _bad(message: str) -> RonError:
    return RonError(ErrorCode.BAD_REQUEST, message)


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{key} must be a non-empty string")
    return value


def _ms(body: dict[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{key} must be a non-negative number of milliseconds")
    return float(value) / 1000.0


def _payload(body: dict[str, Any]) -> bytes:
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str):
            raise _bad("text must be a string")
        return text.encode("utf-8")
    raw = body.get("payload_b64")
    if not isinstance(raw, str):
        raise _bad("send needs text or payload_b64")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise _bad("payload_b64 is not valid base64") from None


def _receipts(body: dict[str, Any]) -> list[str]:
    if "receipt" in body:
        return receipts_from_json({"receipts": [body["receipt"]]})
    return receipts_from_json(body)


def _recv_args(body: dict[str, Any]) -> tuple[int, float]:
    """A recv's ``max`` and its wait in seconds."""
    wait = _ms(body, "wait_ms", 0.0) or 0.0
    if wait * 1000 > MAX_WAIT_MS:
        raise _bad(f"wait_ms must be at most {MAX_WAIT_MS}")
    max_messages = body.get("max", 1)
    if isinstance(max_messages, bool) or not isinstance(max_messages, int):
        raise _bad("max must be an integer")
    return max_messages, wait


async def _recv_acking(
    mb: MailboxAPI, body: dict[str, Any], topics: tuple[str, ...] | None
) -> bytes:
    """recv with ``ack``: the receipts acknowledged, then the next messages leased, in
    one commit; the reply adds ``acked`` and ``gone`` as the ack op's would."""
    max_messages, wait = _recv_args(body)
    return await mb.receive_body(
        _str(body, "topic"),
        max_messages=max_messages,
        visibility_s=_ms(body, "visibility_ms", None),
        wait_s=wait,
        ack=receipts_from_json({"receipts": body["ack"]}),
        topics=topics,
    )


_ROUTES: dict[str, tuple[str, str]] = {
    "send": ("POST", "/v1/mailbox/{topic}/messages"),
    "recv": ("POST", "/v1/mailbox/{topic}/receive"),
    "subscribe": ("GET", "/v1/mailbox/{topic}/subscribe"),
    "ack": ("POST", "/v1/mailbox/ack"),
    "nack": ("POST", "/v1/mailbox/nack"),
    "extend": ("POST", "/v1/mailbox/extend"),
    "delete": ("DELETE", "/v1/mailbox/{topic}/messages/{msg_id}"),
    "stats": ("GET", "/v1/mailbox/{topic}/stats"),
    "dlq": ("GET", "/v1/mailbox/{topic}/dlq"),
    "redrive": ("POST", "/v1/mailbox/{topic}/dlq/redrive"),
}
"""Each op and the HTTP route it stands for, so one token means the same on both doors."""


class MailboxApp:
    """The OAP handler for app 0x0201; the mailbox is looked up per request
    (:class:`~ron.services.mailbox.attached.MailboxOf`), so a node configured without a
    mailbox answers 404 rather than failing to start."""

    def __init__(self, mailbox: Callable[[], MailboxAPI], guard: Guard | None = None) -> None:
        self._mailbox = mailbox
        self._guard = guard

    async def __call__(self, request: OapRequest, reply: Reply) -> None:
        body = json_request(request)
        mailbox = self._mailbox()  # 404 when the node runs no mailbox
        topics = self._authorize(request.grant, body)
        if body.get("op") == "subscribe":
            await _subscribe(mailbox, body, request, reply)
            return
        if body.get("op") == "recv" and "ack" in body:
            # Checked as the ack op too: its route, and its topic caveats for the mailbox.
            acking = self._authorize(request.grant, {"op": "ack"})
            reply.end(await _recv_acking(mailbox, body, acking))
            return
        result = await self._dispatch(mailbox, body, topics)
        reply.end(json.dumps(result, separators=(",", ":")).encode())

    def _authorize(self, grant: Grant | None, body: dict[str, Any]) -> tuple[str, ...] | None:
        """Check the capability as the equivalent HTTP route would (CAPABILITIES.md §5);
        for receipt ops, return the topic caveats for the mailbox to apply."""
        if self._guard is None or grant is None:
            return None
        route = _ROUTES.get(body.get("op"))  # type: ignore[arg-type]
        if route is None:
            return None  # an unknown op is refused by dispatch with 400
        method, template = route
        if "{topic}" not in template:
            self._guard.authorize(grant, method=method, path=template, defer_topic=True)
            return grant.topic_patterns
        topic = _str(body, "topic")
        if body.get("op") == "send" and "messages" in body:
            template = "/v1/mailbox/{topic}/batch"
        path = template.replace("{topic}", topic).replace("{msg_id}", str(body.get("msg_id")))
        self._guard.authorize(grant, method=method, path=path, topic=topic)
        return None

    async def _dispatch(
        self, mb: MailboxAPI, body: dict[str, Any], topics: tuple[str, ...] | None
    ) -> dict[str, Any]:
        op = body.get("op")
        if op == "send":
            topic = _str(body, "topic")
            if "messages" in body:
                items = body["messages"]
                if not isinstance(items, list):
                    raise _bad("messages must be a list")
                sent = await mb.send_batch(topic, [outgoing_from_json(i) for i in items])
                return {"messages": [s.to_wire() for s in sent]}
            headers = body.get("headers") or {}
            key = body.get("idempotency_key")
            if not isinstance(headers, dict) or (key is not None and not isinstance(key, str)):
                raise _bad("headers must be an object and idempotency_key a string")
            result = await mb.send(topic, _payload(body), headers=headers, idempotency_key=key)
            return result.to_wire()
        if op == "recv":
            max_messages, wait = _recv_args(body)
            got = await mb.receive(
                _str(body, "topic"),
                max_messages=max_messages,
                visibility_s=_ms(body, "visibility_ms", None),
                wait_s=wait,
            )
            return {"messages": [delivery_json(d) for d in got]}
        if op == "ack":
            settled = await mb.ack(_receipts(body), topics=topics)
            return {"acked": settled.done, "gone": settled.gone}
        if op == "nack":
            settled = await mb.nack(
                _receipts(body), delay_s=_ms(body, "delay_ms", 0.0) or 0.0, topics=topics
            )
            return {"released": settled.done, "gone": settled.gone}
        if op == "extend":
            visibility = _ms(body, "visibility_ms", None)
            if visibility is None:
                raise _bad("extend needs visibility_ms")
            settled = await mb.extend(_receipts(body), visibility_s=visibility, topics=topics)
            return {"extended": settled.done, "gone": settled.gone}
        if op == "delete":
            if not await mb.delete(_str(body, "topic"), _str(body, "msg_id")):
                raise RonError(ErrorCode.NOT_FOUND, "no such message")
            return {}
        if op == "stats":
            stats: dict[str, Any] = (await mb.stats(_str(body, "topic"))).to_wire()
            return stats
        if op == "dlq":
            limit = body.get("limit", 100)
            cursor = body.get("cursor")
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise _bad("limit must be an integer")
            if cursor is not None and not isinstance(cursor, str):
                raise _bad("cursor must be a string")
            page = await mb.dead_letters(_str(body, "topic"), limit=limit, cursor=cursor)
            return {
                "messages": [dead_letter_json(d) for d in page.letters],
                "next_cursor": page.next_cursor,
            }
        if op == "redrive":
            ids = body.get("msg_ids")
            if ids is not None and (
                not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
            ):
                raise _bad("msg_ids must be a list of strings")
            return {"redriven": await mb.redrive(_str(body, "topic"), msg_ids=ids)}
        raise _bad(f"unknown mailbox op {op!r}")


def is_subscribe(payload: bytes) -> bool:
    """Whether a ``REQ|START`` without END opens a subscription (dispatched at once)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("op") == "subscribe"


async def _subscribe(
    mb: MailboxAPI, body: dict[str, Any], request: OapRequest, reply: Reply
) -> None:
    """``RESP|START`` ``{"subscribed": topic}``, then one ``RESP|EVENT|ACK_REQ`` per
    delivery (the HTTP message shape), until the client's ``REQ|END``; then ``RESP|END``.

    The first poll does not wait: a bad topic or parameter is still a plain error frame.
    A subscription sent as a one-shot ``REQ|START|END`` runs until the connection ends.
    """
    topic = _str(body, "topic")
    visibility = _ms(body, "visibility_ms", None)
    max_unacked = body.get("max_unacked")
    if max_unacked is not None and (
        isinstance(max_unacked, bool) or not isinstance(max_unacked, int)
    ):
        raise _bad("max_unacked must be an integer")
    first = await mb.poll_subscription(
        topic, max_unacked=max_unacked, visibility_s=visibility, wait_s=0
    )
    await reply.send(json.dumps({"subscribed": topic}).encode())
    closed = request.closed or asyncio.Event()
    ended = asyncio.ensure_future(closed.wait())
    polls = follow(mb, topic, first=first, visibility_s=visibility, max_unacked=max_unacked)
    try:
        while True:
            step = asyncio.ensure_future(anext(polls))
            await asyncio.wait({step, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()  # leases of a cancelled poll expire and are redelivered
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                break
            for delivery in step.result():
                payload = json.dumps(delivery_json(delivery), separators=(",", ":"))
                await reply.event(payload.encode())
    finally:
        ended.cancel()
        await polls.aclose()
    reply.end()
