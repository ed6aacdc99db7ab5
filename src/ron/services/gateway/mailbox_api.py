"""The mailbox over HTTP: ``/v1/mailbox/...`` (docs/specs/HTTP-API.md, "Mailbox").

This module only translates: HTTP bodies and headers in, JSON out, every rule applied
by the mailbox service (reached with ``ctx.peers.get("mailbox")``, in-process or over
IPC). The hot routes (send, batch, receive, ack, nack, extend) are implemented in
:mod:`~ron.services.gateway.mailbox_hot`, which the gateway serves on its raw ASGI path
and this app mounts for what falls through to it; the rest are Starlette endpoints.
Bodies are read with :mod:`~ron.services.gateway.bodies`: bounded before anything is
parsed, JSON parsed strictly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import ServiceContext
from ron.services.gateway.asgi import Receive, Scope, Send
from ron.services.gateway.bodies import UnreadBody, json_int, read_object
from ron.services.gateway.mailbox_hot import HotHandler, MailboxHotRoutes, authorize
from ron.services.gateway.v1 import corr_id_of, error_response
from ron.services.mailbox.api import MailboxAPI, follow
from ron.services.mailbox.attached import mailbox_of
from ron.services.mailbox.jsonwire import dead_letter_json, delivery_json
from ron.services.mailbox.model import SubscriptionPoll

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
_REDRIVE_KEYS = frozenset({"msg_ids", "max"})


def allow(request: Request, topic: str | None) -> tuple[str, ...] | None:
    """:func:`~ron.services.gateway.mailbox_hot.authorize` for a Starlette request."""
    state = request.scope.get("state", {})
    return authorize(
        state.get("guard"), state.get("grant"), request.method, request.scope["path"], topic
    )


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    """The mailbox routes of the /v1 app."""
    get_mailbox = mailbox_of(ctx)
    hot = MailboxHotRoutes(get_mailbox)
    api = _MailboxRoutes(get_mailbox)
    return [
        Route("/v1/mailbox/ack", _Mounted(hot, hot.ack), methods=["POST"]),
        Route("/v1/mailbox/nack", _Mounted(hot, hot.nack), methods=["POST"]),
        Route("/v1/mailbox/extend", _Mounted(hot, hot.extend), methods=["POST"]),
        Route("/v1/mailbox/{topic}/messages", _Mounted(hot, hot.send), methods=["POST"]),
        Route("/v1/mailbox/{topic}/batch", _Mounted(hot, hot.send_batch), methods=["POST"]),
        Route("/v1/mailbox/{topic}/messages/{msg_id}", api.delete, methods=["DELETE"]),
        Route("/v1/mailbox/{topic}/receive", _Mounted(hot, hot.receive), methods=["POST"]),
        Route("/v1/mailbox/{topic}/subscribe", api.subscribe, methods=["GET"]),
        Route("/v1/mailbox/{topic}/stats", api.stats, methods=["GET"]),
        Route("/v1/mailbox/{topic}/dlq", api.dead_letters, methods=["GET"]),
        Route("/v1/mailbox/{topic}/dlq/redrive", api.redrive, methods=["POST"]),
    ]


class _Mounted:
    """A hot route as a plain ASGI endpoint of the /v1 app (Starlette calls instances
    that are not functions as ASGI apps), so both ways in run the same handler."""

    def __init__(self, hot: MailboxHotRoutes, handler: HotHandler) -> None:
        self._hot = hot
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        corr = corr_id_of(Request(scope))
        topic = str(scope.get("path_params", {}).get("topic", ""))
        await self._hot.serve(self._handler, scope, receive, send, corr, topic)


Endpoint = Callable[[Any, Request], Awaitable[Response]]


def _reads_body(handler: Endpoint) -> Endpoint:
    @functools.wraps(handler)
    async def endpoint(self: Any, request: Request) -> Response:
        try:
            return await handler(self, request)
        except UnreadBody as exc:
            reply = error_response(request, exc)
            reply.headers["connection"] = "close"
            return reply

    return endpoint


class _MailboxRoutes:
    """The mailbox's Starlette endpoints: the routes that are not on the hot path."""

    def __init__(self, mailbox: Callable[[], MailboxAPI]) -> None:
        self._mailbox = mailbox

    @property
    def mailbox(self) -> MailboxAPI:
        return self._mailbox()

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
        body = await read_object(request.scope, request.receive, _REDRIVE_KEYS, allow_empty=True)
        ids = body.get("msg_ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise RonError(ErrorCode.BAD_REQUEST, "msg_ids must be a list of strings")
        limit = json_int(body.get("max", 1000), "max")
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
