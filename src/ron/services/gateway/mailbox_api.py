"""The mailbox over HTTP: ``/v1/mailbox/...`` (docs/specs/HTTP-API.md, "Mailbox").

This module only translates: HTTP bodies and headers in, JSON out, every rule applied
by the mailbox service (reached with ``ctx.peers.get("mailbox")``, in-process or over
IPC). Bodies are read with a hard bound before anything is parsed; JSON is parsed
strictly (objects only, no unknown or duplicate keys, no NaN, exact types).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ron.auth.guard import Guard
from ron.auth.verifier import Grant
from ron.kernel.config import MAILBOX_HARD_MAX_PAYLOAD
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import ServiceContext
from ron.services.gateway.v1 import corr_id_of, error_response
from ron.services.mailbox.api import MailboxAPI, follow
from ron.services.mailbox.jsonwire import (
    dead_letter_json,
    delivery_json,
    outgoing_from_json,
    receipts_from_json,
)
from ron.services.mailbox.model import (
    MAX_BATCH,
    SubscriptionPoll,
    entry_budget,
)

HEADER_PREFIX = "x-ron-header-"
MAX_CONTROL_BODY = 64 * 1024
# A batch is JSON with base64 payloads: 4/3 of the largest budget, plus the JSON around it.
MAX_BATCH_BODY = entry_budget(MAILBOX_HARD_MAX_PAYLOAD) * 4 // 3 + 64 * 1024
SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}

T = TypeVar("T")


def allow(request: Request, topic: str | None) -> tuple[str, ...] | None:
    """Check the request's capability against this route and topic (403 otherwise).

    The gateway has already authenticated the token (401) before the request got here.
    With ``topic=None`` (ack, nack, extend name receipts, not topics) the token's topic
    caveats are returned for the mailbox to check against each message's topic.
    """
    state = request.scope.get("state", {})
    grant: Grant | None = state.get("grant")
    guard: Guard | None = state.get("guard")
    if grant is None or guard is None:
        return None
    guard.authorize(
        grant,
        method=request.method,
        path=request.scope["path"],
        topic=topic,
        defer_topic=topic is None,
    )
    return grant.topic_patterns if topic is None else None


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    """The mailbox routes of the /v1 app."""
    api = _MailboxRoutes(ctx)
    return [
        Route("/v1/mailbox/ack", api.ack, methods=["POST"]),
        Route("/v1/mailbox/nack", api.nack, methods=["POST"]),
        Route("/v1/mailbox/extend", api.extend, methods=["POST"]),
        Route("/v1/mailbox/{topic}/messages", api.send, methods=["POST"]),
        Route("/v1/mailbox/{topic}/batch", api.send_batch, methods=["POST"]),
        Route("/v1/mailbox/{topic}/messages/{msg_id}", api.delete, methods=["DELETE"]),
        Route("/v1/mailbox/{topic}/receive", api.receive, methods=["POST"]),
        Route("/v1/mailbox/{topic}/subscribe", api.subscribe, methods=["GET"]),
        Route("/v1/mailbox/{topic}/stats", api.stats, methods=["GET"]),
        Route("/v1/mailbox/{topic}/dlq", api.dead_letters, methods=["GET"]),
        Route("/v1/mailbox/{topic}/dlq/redrive", api.redrive, methods=["POST"]),
    ]


class _UnreadBody(RonError):
    """A refusal sent before the request body was read: the connection must close, or
    the unread bytes would be parsed as the next request."""


Endpoint = Callable[[Any, Request], Awaitable[Response]]


def _reads_body(handler: Endpoint) -> Endpoint:
    @functools.wraps(handler)
    async def endpoint(self: Any, request: Request) -> Response:
        try:
            return await handler(self, request)
        except _UnreadBody as exc:
            reply = error_response(request, exc)
            reply.headers["connection"] = "close"
            return reply

    return endpoint


class _MailboxRoutes:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    @property
    def mailbox(self) -> MailboxAPI:
        try:
            peer: MailboxAPI = self._ctx.peers.get("mailbox")
        except KeyError:
            raise RonError(
                ErrorCode.NOT_FOUND, "the mailbox service is not enabled on this node"
            ) from None
        return peer

    # ---- send ------------------------------------------------------------------------

    @_reads_body
    async def send(self, request: Request) -> Response:
        topic = request.path_params["topic"]
        allow(request, topic)
        payload = await read_body(request, MAILBOX_HARD_MAX_PAYLOAD)
        headers = {
            name[len(HEADER_PREFIX) :]: value
            for name, value in request.headers.items()
            if name.startswith(HEADER_PREFIX)
        }
        result = await self.mailbox.send(
            topic,
            payload,
            headers=headers,
            idempotency_key=request.headers.get("idempotency-key"),
        )
        return JSONResponse(
            {"msg_id": result.msg_id, "duplicate": result.duplicate}, status_code=201
        )

    @_reads_body
    async def send_batch(self, request: Request) -> Response:
        topic = request.path_params["topic"]
        allow(request, topic)
        body = await read_json(request, {"messages"}, limit=MAX_BATCH_BODY)
        items = body.get("messages")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise RonError(ErrorCode.BAD_REQUEST, f"messages must be a list of 1..{MAX_BATCH}")
        entries = [outgoing_from_json(item) for item in items]
        results = await self.mailbox.send_batch(topic, entries)
        return JSONResponse(
            {"messages": [{"msg_id": r.msg_id, "duplicate": r.duplicate} for r in results]},
            status_code=201,
        )

    # ---- receive ---------------------------------------------------------------------

    @_reads_body
    async def receive(self, request: Request) -> Response:
        topic = request.path_params["topic"]
        allow(request, topic)
        body = await read_json(request, {"max", "visibility_s", "wait_s"}, allow_empty=True)
        limit = _int(body.get("max", 1), "max")
        visibility = _number_or_none(body.get("visibility_s"), "visibility_s")
        wait = _number_or_none(body.get("wait_s"), "wait_s") or 0.0
        call = self.mailbox.receive(topic, max_messages=limit, visibility_s=visibility, wait_s=wait)
        got = await until_disconnect(request, call) if wait > 0 else await call
        return JSONResponse({"messages": [delivery_json(d) for d in got]})

    async def subscribe(self, request: Request) -> Response:
        """Server-Sent Events: one ``message`` event per delivery, comments as heartbeats."""
        topic = request.path_params["topic"]
        allow(request, topic)
        query = request.query_params
        unknown = set(query) - {"visibility_s", "max_unacked"}
        if unknown:
            raise RonError(ErrorCode.BAD_REQUEST, f"unknown parameter {sorted(unknown)[0]!r}")
        visibility = _query_number(query.get("visibility_s"), "visibility_s")
        max_unacked = _query_number(query.get("max_unacked"), "max_unacked")
        cap = None if max_unacked is None else _whole(max_unacked, "max_unacked")
        mailbox = self.mailbox
        # A first poll that does not wait: the service validates every parameter while
        # an error can still be a status code, and what is ready goes out at once.
        first = await mailbox.poll_subscription(
            topic, max_unacked=cap, visibility_s=visibility, wait_s=0
        )
        stream = sse_events(
            mailbox,
            topic,
            first=first,
            visibility_s=visibility,
            max_unacked=cap,
            corr_id=corr_id_of(request),
        )
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    # ---- settle ----------------------------------------------------------------------

    @_reads_body
    async def ack(self, request: Request) -> Response:
        topics = allow(request, None)
        body = await read_json(request, {"receipts"})
        settled = await self.mailbox.ack(receipts_from_json(body), topics=topics)
        return JSONResponse({"acked": settled.done, "gone": settled.gone})

    @_reads_body
    async def nack(self, request: Request) -> Response:
        topics = allow(request, None)
        body = await read_json(request, {"receipts", "delay_s"})
        delay = _number_or_none(body.get("delay_s"), "delay_s") or 0.0
        settled = await self.mailbox.nack(receipts_from_json(body), delay_s=delay, topics=topics)
        return JSONResponse({"released": settled.done, "gone": settled.gone})

    @_reads_body
    async def extend(self, request: Request) -> Response:
        topics = allow(request, None)
        body = await read_json(request, {"receipts", "visibility_s"})
        visibility = _number_or_none(body.get("visibility_s"), "visibility_s")
        if visibility is None:
            raise RonError(ErrorCode.BAD_REQUEST, "visibility_s is required")
        settled = await self.mailbox.extend(
            receipts_from_json(body), visibility_s=visibility, topics=topics
        )
        return JSONResponse({"extended": settled.done, "gone": settled.gone})

    async def delete(self, request: Request) -> Response:
        topic = request.path_params["topic"]
        allow(request, topic)
        if not await self.mailbox.delete(topic, request.path_params["msg_id"]):
            raise RonError(ErrorCode.NOT_FOUND, "no such message in this topic")
        return JSONResponse({"deleted": True})

    # ---- stats and dead letters ------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        if request.query_params:
            raise RonError(ErrorCode.BAD_REQUEST, "stats takes no parameters")
        allow(request, request.path_params["topic"])
        stats = await self.mailbox.stats(request.path_params["topic"])
        return JSONResponse(stats.to_wire())

    async def dead_letters(self, request: Request) -> Response:
        query = request.query_params
        unknown = set(query) - {"limit", "cursor"}
        if unknown:
            raise RonError(ErrorCode.BAD_REQUEST, f"unknown parameter {sorted(unknown)[0]!r}")
        limit = query.get("limit", "100")
        if not limit.isdigit() or len(limit) > 4:
            raise RonError(ErrorCode.BAD_REQUEST, "limit must be an integer 1..100")
        allow(request, request.path_params["topic"])
        page = await self.mailbox.dead_letters(
            request.path_params["topic"], limit=int(limit), cursor=query.get("cursor")
        )
        return JSONResponse(
            {
                "messages": [dead_letter_json(d) for d in page.letters],
                "next_cursor": page.next_cursor,
            }
        )

    @_reads_body
    async def redrive(self, request: Request) -> Response:
        body = await read_json(request, {"msg_ids", "max"}, allow_empty=True)
        ids = body.get("msg_ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise RonError(ErrorCode.BAD_REQUEST, "msg_ids must be a list of strings")
        limit = _int(body.get("max", 1000), "max")
        allow(request, request.path_params["topic"])
        moved = await self.mailbox.redrive(request.path_params["topic"], msg_ids=ids, limit=limit)
        return JSONResponse({"redriven": moved})


# ---- SSE ---------------------------------------------------------------------------


async def sse_events(
    mailbox: MailboxAPI,
    topic: str,
    *,
    first: SubscriptionPoll,
    visibility_s: float | None,
    max_unacked: int | None,
    corr_id: str,
) -> AsyncIterator[bytes]:
    """The event stream of one subscription.

    Opens with a ``: subscribed`` comment (a client knows the subscription is live),
    sends ``: keepalive`` whenever a poll comes back empty (at least every 15 s), and
    ends with an ``error`` event carrying the envelope if the mailbox refuses. Retryable
    failures (the mailbox restarting) are retried: a subscription outlives a restart.
    """
    yield b": subscribed\n\n"
    polls = follow(mailbox, topic, first=first, visibility_s=visibility_s, max_unacked=max_unacked)
    opening = True
    try:
        async for deliveries in polls:
            if not deliveries and not opening:
                yield b": keepalive\n\n"
            opening = False
            for delivery in deliveries:
                data = json.dumps(delivery_json(delivery), separators=(",", ":"))
                yield f"id: {delivery.msg_id}\nevent: message\ndata: {data}\n\n".encode()
    except RonError as exc:
        data = json.dumps(exc.envelope(corr_id), separators=(",", ":"))
        yield f"event: error\ndata: {data}\n\n".encode()
    finally:
        await polls.aclose()


# ---- JSON shapes -------------------------------------------------------------------


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    return value


def _number_or_none(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be a number")
    return float(value)


def _query_number(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be a finite number")
    return number


def _whole(value: float, name: str) -> int:
    if not value.is_integer():
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    return int(value)


# ---- bodies ------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _UnreadBody(ErrorCode.BAD_REQUEST, "Content-Length is not a number")
        if int(declared) > limit:
            raise _UnreadBody(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds {limit} bytes")
    if request.headers.get("content-encoding", "identity") != "identity":
        raise _UnreadBody(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are refused")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise _UnreadBody(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds {limit} bytes")
    return bytes(buf)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RonError(ErrorCode.BAD_REQUEST, f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise RonError(ErrorCode.BAD_REQUEST, f"{name} is not JSON")


async def read_json(
    request: Request,
    allowed: set[str],
    *,
    limit: int = MAX_CONTROL_BODY,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """A JSON object with only ``allowed`` keys; an empty body is ``{}`` if allowed."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if allow_empty:
            return {}
        raise RonError(ErrorCode.BAD_REQUEST, "a JSON object body is required")
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise RonError(ErrorCode.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise RonError(ErrorCode.BAD_REQUEST, f"unknown key {sorted(unknown)[0]!r}")
    return body


async def until_disconnect(request: Request, call: Awaitable[T]) -> T:
    """Run a waiting call, abandoning it if the client goes away meanwhile.

    Abandoning cancels the IPC call, and the mailbox cancels the wait: a long-poll whose
    client left does not lease messages to nobody.
    """
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise RonError(ErrorCode.BAD_REQUEST, "client disconnected")
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
