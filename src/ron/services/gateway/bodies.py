"""Request bodies of the JSON APIs, on plain ASGI: bounded reads, strict JSON, replies.

Framework-free on purpose: the mailbox's hot routes run on the gateway's raw ASGI path
and its other routes on Starlette, and both must refuse the same bodies with the same
codes. So the rules live here once, over ``(scope, receive)``: a body is read with a
hard bound before anything is parsed (413 as soon as it is known to be too large), and
JSON is parsed strictly (objects only, no unknown or duplicate keys, no NaN, exact
types).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.strictjson import json_int, json_number_or_none, parse_object, render_json
from ron.services.gateway.asgi import Headers, Receive, Scope, Send, header

__all__ = [
    "JSON_HEADERS",
    "MAX_CONTROL_BODY",
    "UnreadBody",
    "json_int",
    "json_number_or_none",
    "parse_object",
    "read_body",
    "read_object",
    "render_json",
    "reply_error",
    "reply_json",
    "until_disconnect",
]

T = TypeVar("T")

MAX_CONTROL_BODY = 64 * 1024

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class UnreadBody(RonError):
    """A refusal sent before the request body was read: the connection must close, or
    the unread bytes would be parsed as the next request."""


async def reply_json(send: Send, status: int, body: bytes, extra: Headers | None = None) -> None:
    """A complete JSON response (Content-Length, no chunking)."""
    headers = [
        *JSON_HEADERS,
        *(extra or ()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def reply_error(send: Send, exc: RonError, corr: str) -> None:
    """The error envelope as the /v1 APIs send it (Retry-After when the error has one;
    ``Connection: close`` for a refusal that left the body unread)."""
    extra: Headers = []
    if exc.retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    if isinstance(exc, UnreadBody):
        extra.append((b"connection", b"close"))
    await reply_json(send, exc.status, render_json(exc.envelope(corr)), extra)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit``."""
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UnreadBody(ErrorCode.BAD_REQUEST, "Content-Length is not a number")
        if int(declared) > limit:
            raise UnreadBody(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds {limit} bytes")
    encoding = header(scope, b"content-encoding")
    if encoding is not None and encoding != "identity":
        raise UnreadBody(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "compressed request bodies are refused")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        # The common case: the whole body came in one message (no copy).
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise UnreadBody(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds {limit} bytes")
        return body
    buf = bytearray()
    while True:
        if message["type"] != "http.request":
            raise RonError(ErrorCode.BAD_REQUEST, "client disconnected mid-body")
        buf += message.get("body", b"")
        if len(buf) > limit:
            raise UnreadBody(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds {limit} bytes")
        if not message.get("more_body", False):
            return bytes(buf)
        message = await receive()


async def read_object(
    scope: Scope,
    receive: Receive,
    allowed: frozenset[str],
    *,
    limit: int = MAX_CONTROL_BODY,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Read the body (bounded by ``limit``) and parse it with :func:`parse_object`."""
    return parse_object(await read_body(scope, receive, limit), allowed, allow_empty=allow_empty)


async def until_disconnect(receive: Receive, call: Awaitable[T]) -> T:
    """Run a waiting call, abandoning it if the client goes away meanwhile.

    Abandoning cancels the IPC call, and the mailbox cancels the wait: a long-poll whose
    client left does not lease messages to nobody. One future woken by whichever task
    ends first (not ``asyncio.wait`` and ``gather``, which cost more than the rest of a
    receive's handling in the gateway).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(call)
    watcher = loop.create_task(_disconnected(receive))
    first: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        if not first.done():
            first.set_result(None)

    task.add_done_callback(wake)
    watcher.add_done_callback(wake)
    try:
        await first
        if task.done():
            return task.result()
        raise RonError(ErrorCode.BAD_REQUEST, "client disconnected")
    finally:
        task.remove_done_callback(wake)
        watcher.remove_done_callback(wake)
        watcher.cancel()  # nothing waits for it: it just stops reading
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
