"""The mailbox's hot routes on the gateway's raw ASGI path: send, batch send, receive,
ack, nack and extend (docs/specs/HTTP-API.md, "Mailbox").

Why not Starlette: a mailbox request is small and frequent, and routing, middleware and
``Request``/``JSONResponse`` objects cost about as much gateway CPU as the rest of the
request together. These routes are matched by hand (``POST`` on an exact path shape)
and served here; everything else under ``/v1`` (and these paths with another method or
a trailing slash) still goes to the Starlette app, which mounts these same handlers, so
there is one implementation of each route whichever way a request arrives.

The rules are the ones every /v1 route applies: the capability is checked against the
route and topic before the body is read, bodies are read with a hard bound and parsed
strictly (:mod:`~ron.services.gateway.bodies`), and refusals leave as the /v1 error
envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ron.auth.guard import Guard
from ron.auth.verifier import Grant
from ron.kernel.config import MAILBOX_HARD_MAX_PAYLOAD
from ron.proto.envelope import ErrorCode, RonError
from ron.services.gateway.asgi import Receive, Scope, Send
from ron.services.gateway.bodies import (
    json_int,
    json_number_or_none,
    read_body,
    read_object,
    reply_error,
    reply_json,
    until_disconnect,
)
from ron.services.mailbox.api import MailboxAPI
from ron.services.mailbox.jsonwire import (
    batch_from_body,
    receipts_from_json,
    send_result_body,
    send_results_body,
)
from ron.services.mailbox.model import entry_budget

HEADER_PREFIX = "x-ron-header-"
_HEADER_PREFIX = HEADER_PREFIX.encode()
# A batch is JSON with base64 payloads: 4/3 of the largest budget, plus the JSON around it.
MAX_BATCH_BODY = entry_budget(MAILBOX_HARD_MAX_PAYLOAD) * 4 // 3 + 64 * 1024

_RECEIVE_KEYS = frozenset({"max", "visibility_s", "wait_s", "ack"})
_RECEIPTS = frozenset({"receipts"})
_NACK_KEYS = frozenset({"receipts", "delay_s"})
_EXTEND_KEYS = frozenset({"receipts", "visibility_s"})

# (scope, receive, send, corr id, topic or "" for the settle routes)
HotHandler = Callable[[Scope, Receive, Send, str, str], Awaitable[None]]
GetMailbox = Callable[[], MailboxAPI]


def authorize(
    guard: Guard | None, grant: Grant | None, method: str, path: str, topic: str | None
) -> tuple[str, ...] | None:
    """Check the request's capability against this route and topic (403 otherwise).

    The gateway has already authenticated the token (401) before the request got here.
    With ``topic=None`` (ack, nack, extend name receipts, not topics) the token's topic
    caveats are returned for the mailbox to check against each message's topic.
    """
    if grant is None or guard is None:
        return None
    guard.authorize(grant, method=method, path=path, topic=topic, defer_topic=topic is None)
    return grant.topic_patterns if topic is None else None


class MailboxHotRoutes:
    """Dispatch and handlers of the hot mailbox routes for one gateway process."""

    def __init__(self, mailbox: GetMailbox) -> None:
        self._mailbox = mailbox
        self._by_verb: dict[str, HotHandler] = {
            "messages": self.send,
            "batch": self.send_batch,
            "receive": self.receive,
        }
        self._settle: dict[str, HotHandler] = {
            "ack": self.ack,
            "nack": self.nack,
            "extend": self.extend,
        }

    def match(self, method: str, path: str) -> tuple[HotHandler, str] | None:
        """(handler, topic) for ``POST`` on a hot path shape, else None (the caller
        falls back to the /v1 app). ``path`` starts with ``/v1/mailbox/``."""
        if method != "POST":
            return None
        rest = path[12:]
        first, slash, verb = rest.partition("/")
        if not first:
            return None
        if not slash:
            handler = self._settle.get(first)
            return None if handler is None else (handler, "")
        found = self._by_verb.get(verb)
        return None if found is None else (found, first)

    async def serve(
        self, handler: HotHandler, scope: Scope, receive: Receive, send: Send, corr: str, topic: str
    ) -> None:
        """Run ``handler``; refusals leave as the /v1 error envelope."""
        try:
            await handler(scope, receive, send, corr, topic)
        except RonError as exc:
            await reply_error(send, exc, corr)

    @staticmethod
    def _allow(
        scope: Scope, topic: str | None, as_route: str | None = None
    ) -> tuple[str, ...] | None:
        """:func:`authorize` for this request, or with ``as_route`` for the ``POST`` of
        another route whose work it carries (a receive's acks)."""
        state = scope["state"]
        grant: Grant | None = state.get("grant")
        if grant is None:
            return None
        method, path = ("POST", as_route) if as_route else (scope["method"], scope["path"])
        return authorize(state.get("guard"), grant, method, path, topic)

    # ---- send ------------------------------------------------------------------------

    async def send(self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str) -> None:
        self._allow(scope, topic)
        payload = await read_body(scope, receive, MAILBOX_HARD_MAX_PAYLOAD)
        headers: dict[str, str] = {}
        key: str | None = None
        for name, value in scope["headers"]:
            if name.startswith(_HEADER_PREFIX):
                headers[name[len(_HEADER_PREFIX) :].decode("latin-1")] = value.decode("latin-1")
            elif key is None and name == b"idempotency-key":
                key = value.decode("latin-1")
        result = await self._mailbox().send(topic, payload, headers=headers, idempotency_key=key)
        await reply_json(send, 201, send_result_body(result))

    async def send_batch(
        self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str
    ) -> None:
        self._allow(scope, topic)
        entries = batch_from_body(await read_body(scope, receive, MAX_BATCH_BODY))
        results = await self._mailbox().send_batch(topic, entries)
        await reply_json(send, 201, send_results_body(results))

    # ---- receive ---------------------------------------------------------------------

    async def receive(
        self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str
    ) -> None:
        self._allow(scope, topic)
        body = await read_object(scope, receive, _RECEIVE_KEYS, allow_empty=True)
        limit = json_int(body.get("max", 1), "max")
        visibility = json_number_or_none(body.get("visibility_s"), "visibility_s")
        wait = json_number_or_none(body.get("wait_s"), "wait_s") or 0.0
        ack: list[str] = []
        topics: tuple[str, ...] | None = None
        if "ack" in body:
            # The receipts are acknowledged as POST /v1/mailbox/ack would: that route's
            # permission, the token's topic caveats checked against each message.
            ack = receipts_from_json({"receipts": body["ack"]})
            topics = self._allow(scope, None, as_route="/v1/mailbox/ack")
        call = self._mailbox().receive_body(
            topic, max_messages=limit, visibility_s=visibility, wait_s=wait, ack=ack, topics=topics
        )
        await reply_json(
            send, 200, await until_disconnect(receive, call) if wait > 0 else await call
        )

    # ---- settle ----------------------------------------------------------------------

    async def ack(self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str) -> None:
        topics = self._allow(scope, None)
        body = await read_object(scope, receive, _RECEIPTS)
        settled = await self._mailbox().ack(receipts_from_json(body), topics=topics)
        await reply_json(send, 200, _settled("acked", settled.done, settled.gone))

    async def nack(self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str) -> None:
        topics = self._allow(scope, None)
        body = await read_object(scope, receive, _NACK_KEYS)
        delay = json_number_or_none(body.get("delay_s"), "delay_s") or 0.0
        settled = await self._mailbox().nack(receipts_from_json(body), delay_s=delay, topics=topics)
        await reply_json(send, 200, _settled("released", settled.done, settled.gone))

    async def extend(
        self, scope: Scope, receive: Receive, send: Send, corr: str, topic: str
    ) -> None:
        topics = self._allow(scope, None)
        body = await read_object(scope, receive, _EXTEND_KEYS)
        visibility = json_number_or_none(body.get("visibility_s"), "visibility_s")
        if visibility is None:
            raise RonError(ErrorCode.BAD_REQUEST, "visibility_s is required")
        settled = await self._mailbox().extend(
            receipts_from_json(body), visibility_s=visibility, topics=topics
        )
        await reply_json(send, 200, _settled("extended", settled.done, settled.gone))


def _settled(verb: str, done: int, gone: int) -> bytes:
    return f'{{"{verb}":{int(done)},"gone":{int(gone)}}}'.encode()
