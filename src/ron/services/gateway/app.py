"""The HTTP gateway: GET/HEAD of content by address, POST /put, health and metrics.

REFERENCE §3 is the contract and docs/specs/HTTP-API.md states it in full. Every error
leaves as the one envelope (§4) with ``X-Corr-Id``; every request is counted under its
route template, never its raw path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from ron.auth.guard import Guard
from ron.auth.verifier import Grant, bearer_token
from ron.kernel.metrics import CONTENT_TYPE, Metrics, RequestTally
from ron.proto.address import Address, parse_address
from ron.proto.bundle import PRIVATE_MARKER
from ron.proto.envelope import ErrorCode, RonError, sane_corr_id
from ron.proto.httpsem import (
    RangeNotSatisfiable,
    choose_encoding,
    etag_matches,
    if_range_allows,
    parse_range,
)
from ron.proto.manifest import Manifest, Relations
from ron.services.gateway.accesslog import AccessLog
from ron.services.gateway.admission import Admission, Admitted
from ron.services.gateway.asgi import (
    ASGIApp,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    header,
    json_body,
    respond,
)
from ron.services.gateway.decode import DecodeRejected, decode_body, parse_content_encoding
from ron.services.gateway.limits import QuotaExhausted, ratelimit_headers
from ron.services.gateway.mailbox_hot import HotHandler, MailboxHotRoutes
from ron.services.overlay.reader import ContentReader, ObjectInfo
from ron.services.storage.service import manifest_summary
from ron.services.storage.store import IntegrityError, ObjectStore

log = logging.getLogger("ron.gateway")

IMMUTABLE = b"public, max-age=31536000, immutable"
PRIVATE_IMMUTABLE = b"private, max-age=31536000, immutable"
MANIFEST_CACHE = b"public, max-age=60"
MANIFEST_NAME = "Manifest.toml"


class Registrar(Protocol):
    """The write half of the overlay, reached over IPC (or in-process)."""

    async def register(self, summary: dict[str, Any]) -> bool: ...


class GatewaySettings(Protocol):
    """Live settings (they follow config reloads)."""

    @property
    def enforce_payments(self) -> bool: ...
    @property
    def max_put_bytes(self) -> int: ...


_Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]


class Exchange:
    """Per-request bookkeeping for metrics and the request log line."""

    __slots__ = ("received", "sent", "started", "status", "tenant")

    def __init__(self) -> None:
        self.status = 500
        self.started = False
        self.sent = 0
        self.received = 0
        self.tenant: str | None = None


class GatewayApp:
    """The raw ASGI application one gateway process serves."""

    def __init__(
        self,
        *,
        reader: ContentReader,
        store: ObjectStore,
        overlay: Registrar,
        metrics: Metrics,
        settings: GatewaySettings,
        ready: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
        node_metrics: Callable[[], Awaitable[bytes]],
        admission: Admission,
        guard: Guard,
        v1: ASGIApp | None = None,
        mailbox: MailboxHotRoutes | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.reader = reader
        self.store = store
        self.overlay = overlay
        self.metrics = metrics
        self.settings = settings
        self._ready = ready
        self._node_metrics = node_metrics
        self._v1 = v1
        self._mailbox = mailbox
        self.admission = admission
        self.guard = guard
        self.access_log = access_log or AccessLog("gateway")
        self.tally = RequestTally(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        corr = sane_corr_id(header(scope, b"x-corr-id"))
        route, handler, limited, write, needs_token = self._route(method, path)
        state = Exchange()
        scope.setdefault("state", {})["exchange"] = state
        extra_headers: Headers = [(b"x-corr-id", corr.encode())]

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
                state.started = True
                message["headers"] = [*message["headers"], *extra_headers]
            elif message["type"] == "http.response.body":
                state.sent += len(message.get("body", b""))
            await send(message)

        admission = self.admission
        head = method == "HEAD"
        if limited:  # health, readiness and metrics never count as load
            admission.begin()
        try:
            if limited:
                client = scope.get("client")
                grant = self.guard.grant(
                    bearer_token(header(scope, b"authorization")), required=needs_token
                )
                if grant is not None:
                    state.tenant = grant.tenant
                    scope["state"]["grant"] = grant
                    if route == "/o/{addr}":
                        self.guard.authorize(
                            grant, method=method, path=path, addr=path[3:].partition("/")[0]
                        )
                admitted = await admission.admit(
                    route=route,
                    write=write,
                    api_key=header(scope, b"x-api-key"),
                    client_host=client[0] if client else None,
                    tenant_name=grant.tenant if grant is not None else None,
                )
                state.tenant = admitted.tenant.id if admitted.tenant else None
                scope["state"]["admitted"] = admitted
                if admitted.verdict is not None and admitted.tenant is not None:
                    extra_headers.extend(ratelimit_headers(admitted.tenant, admitted.verdict))
            await handler(scope, receive, tracking_send, corr)
        except RonError as exc:
            if isinstance(exc, QuotaExhausted):
                state.tenant = exc.tenant.id
                extra_headers.extend(ratelimit_headers(exc.tenant, exc.verdict))
            if isinstance(exc, DecodeRejected):
                self.metrics.rejected_total.labels(exc.reason).inc()
            await self._error(tracking_send, exc, corr, head, started=state.started)
        except Exception:
            log.exception("unhandled error", extra={"corr_id": corr, "route": route})
            await self._error(
                tracking_send,
                RonError(ErrorCode.INTERNAL, "internal error"),
                corr,
                head,
                started=state.started,
            )
        finally:
            if limited:
                admission.end()
            elapsed = time.perf_counter() - started
            if admission.config.request_metrics:
                self.observe(route, method, state, elapsed)
            self.access_log.request(
                corr,
                route,
                method,
                state.status,
                state.received,
                state.sent,
                round(elapsed * 1000, 3),
                state.tenant,
            )

    def observe(self, route: str, method: str, state: Exchange, elapsed: float) -> None:
        """Golden metrics for one request (tallied; folded in at each scrape)."""
        self.tally.add(route, method, state.status, elapsed, state.sent, state.received)

    # --- routing ------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, _Handler, bool, bool, bool]:
        """(route template, handler, quota-limited, is a write, needs a token)."""
        if path.startswith("/o/"):
            if method in ("GET", "HEAD"):
                return "/o/{addr}", self.get_object, True, False, False
            return "/o/{addr}", _method_not_allowed("GET, HEAD"), False, False, False
        if path == "/put":
            if method == "POST":
                return "/put", self.put, True, True, True
            return "/put", _method_not_allowed("POST"), False, False, False
        if path.startswith("/v1/") and self._v1 is not None:
            mailbox = path.startswith("/v1/mailbox/")
            write = method == "POST" and mailbox and path.endswith("/messages")
            handler: _Handler = self.v1
            if mailbox and self._mailbox is not None:
                hot = self._mailbox.match(method, path)
                if hot is not None:
                    handler = _hot(self._mailbox, self.guard, *hot)
            return _v1_route(path), handler, True, write, mailbox
        if path == "/healthz":
            return "/healthz", self.healthz, False, False, False
        if path == "/readyz":
            return "/readyz", self.readyz, False, False, False
        if path == "/metrics":
            return "/metrics", self.metrics_route, False, False, False
        return "other", _not_found, False, False, False

    async def _error(
        self, send: Send, exc: RonError, corr: str, head: bool, *, started: bool
    ) -> None:
        if started:
            # Headers (and maybe bytes) are out: the only honest signal left is to
            # break the connection so the client never sees a complete response.
            raise exc
        headers: Headers = [(b"content-type", b"application/json")]
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
        headers.extend(getattr(exc, "headers", []))
        if exc.code is ErrorCode.UNAUTHORIZED:
            headers.append((b"www-authenticate", b'Bearer realm="ron"'))
        if exc.code is ErrorCode.UNAVAILABLE and exc.retry_after is None:
            headers.append((b"retry-after", str(random.randint(1, 5)).encode()))
        await respond(send, exc.status, headers, json_body(exc.envelope(corr)), head=head)

    async def v1(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        """The JSON APIs under /v1 (mailbox, capabilities): a Starlette app of their own.

        They are not on the content hot path, so routing by framework costs nothing
        that matters; errors still leave as the envelope through ``__call__``.
        """
        assert self._v1 is not None
        state = scope.setdefault("state", {})
        state["corr_id"] = corr
        state["guard"] = self.guard
        await self._v1(scope, receive, send)

    # --- admin-style routes -------------------------------------------------------------

    async def healthz(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        await respond(send, 200, [(b"content-type", b"application/json")], b'{"status":"ok"}')

    async def readyz(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        ok, snap = await self._ready()
        # Judge on this answer, not on the worker's cached one: that was primed when the
        # gateway started, before the services after it were up, and a probe must not
        # see a stale "down" once per worker.
        self.admission.record_node_ready(ok)
        reason = self.admission.degraded_reason()
        if reason is not None:
            ok = False
            snap = {**snap, "ready": False}
            snap.setdefault("degraded", {})["gateway"] = reason
        snap["reads"] = "open"
        snap["writes"] = "closed" if reason is not None else "open"
        headers: Headers = [(b"content-type", b"application/json")]
        if not ok:
            headers.append((b"retry-after", str(random.randint(1, 5)).encode()))
        await respond(send, 200 if ok else 503, headers, json_body(snap))

    async def metrics_route(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        body = await self._node_metrics()
        await respond(send, 200, [(b"content-type", CONTENT_TYPE.encode())], body)

    # --- GET / HEAD -------------------------------------------------------------------

    async def get_object(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        head = scope["method"] == "HEAD"
        addr, rel = split_object_path(scope["path"][3:])
        info = self.reader.stat(addr)
        manifest = info.manifest
        etag = f'"b3:{info.hex}"'.encode()
        if info.private and scope["state"].get("grant") is None:
            # (a presented token was already checked against this path and address)
            raise RonError(ErrorCode.UNAUTHORIZED, "this object is private: a token is required")
        if rel == MANIFEST_NAME:
            await self._serve_manifest(scope, send, info, etag, head)
            return
        base = validator_headers(info, etag)
        pay_headers = self._payment(manifest)
        inm = header(scope, b"if-none-match")
        if inm is not None and etag_matches(inm, etag.decode()):
            await respond(send, 304, base, head=True)
            return
        headers = content_headers(info, base, pay_headers)
        size = info.size
        range_header = header(scope, b"range")
        if range_header is not None:
            if_range = header(scope, b"if-range")
            if if_range is None or if_range_allows(if_range, etag.decode()):
                try:
                    span = parse_range(range_header, size)
                except RangeNotSatisfiable as exc:
                    exc.headers = [(b"content-range", f"bytes */{size}".encode())]  # type: ignore[attr-defined]
                    raise
                if span is not None:
                    start, end = span
                    headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
                    await self._send_payload(scope, send, info, headers, 206, start, end, head)
                    return
        coding = choose_encoding(
            header(scope, b"accept-encoding"), [e.coding for e in manifest.encodings]
        )
        if coding != "identity":
            data = await self.reader.read_encoding(info, coding)
            if data is not None:
                if not head:
                    self._charge(scope, len(data))
                headers.append((b"content-encoding", coding.encode()))
                await respond(send, 200, headers, data, head=head)
                return
        await self._send_payload(scope, send, info, headers, 200, 0, size - 1, head)

    def _charge(self, scope: Scope, nbytes: int) -> None:
        """Charge response bytes to the tenant's byte bucket before sending them."""
        admitted: Admitted | None = scope["state"].get("admitted")
        if admitted is not None:
            self.admission.charge_bytes(admitted, "/o/{addr}", nbytes)

    async def _send_payload(
        self,
        scope: Scope,
        send: Send,
        info: ObjectInfo,
        headers: Headers,
        status: int,
        start: int,
        end: int,
        head: bool,
    ) -> None:
        length = max(0, end - start + 1)
        if head:
            await _respond_head(send, status, headers, length)
            return
        self._charge(scope, length)
        if self.reader.is_small(info):
            data = await self.reader.read_small(info)
            await respond(send, status, headers, data[start : end + 1])
            return
        if length == 0:
            await respond(send, status, headers, b"")
            return
        stream = self.reader.stream_payload(info, start, end)
        first = await anext(stream)  # errors before any byte still become envelopes
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(length).encode())],
            }
        )
        await send({"type": "http.response.body", "body": first, "more_body": True})
        write_timeout = self.admission.config.write_timeout_s
        async for chunk in stream:
            try:
                async with asyncio.timeout(write_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                # A reader that stopped reading holds nothing of ours for long.
                self.metrics.rejected_total.labels("write_timeout").inc()
                await stream.aclose()  # type: ignore[attr-defined]
                raise
        await send({"type": "http.response.body", "body": b""})

    async def _serve_manifest(
        self, scope: Scope, send: Send, info: ObjectInfo, etag: bytes, head: bool
    ) -> None:
        try:
            body = (info.bundle / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            self.reader.forget(info.hex)
            raise RonError(ErrorCode.NOT_FOUND, "object vanished") from None
        base: Headers = [
            (b"etag", etag),
            (b"cache-control", b"private, max-age=60" if info.private else MANIFEST_CACHE),
            (b"vary", b"Accept-Encoding"),
        ]
        inm = header(scope, b"if-none-match")
        if inm is not None and etag_matches(inm, etag.decode()):
            await respond(send, 304, base, head=True)
            return
        headers = [
            *base,
            (b"content-type", b"application/toml; charset=utf-8"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await respond(send, 200, headers, body, head=head)

    def _payment(self, manifest: Manifest) -> Headers:
        pay = manifest.payment
        if pay is None or not pay.required:
            return []
        headers: Headers = [
            (b"x-payment-currency", pay.currency.encode()),
            (b"x-payment-price-model", pay.price_model.encode()),
            (b"x-payment-price", _num(pay.price).encode()),
            (b"x-payment-wallet", pay.wallet.encode()),
        ]
        if self.settings.enforce_payments:
            err = RonError(
                ErrorCode.PAYMENT_REQUIRED,
                "this object requires payment",
                extra={
                    "currency": pay.currency,
                    "price_model": pay.price_model,
                    "price": pay.price,
                    "wallet": pay.wallet,
                },
            )
            err.headers = headers  # type: ignore[attr-defined]
            raise err
        return [(b"x-payment-required", b"true"), *headers]

    # --- PUT ----------------------------------------------------------------------------

    async def put(self, scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        tld = (query.get("tld") or [None])[0]
        filename = (query.get("filename") or [None])[0]
        license_ = (query.get("license") or [None])[0]
        parent = (query.get("parent") or [None])[0]
        private = _flag((query.get("private") or [None])[0], "private")
        relations = Relations(parent=parse_address(parent)) if parent else None
        mime = (header(scope, b"content-type") or "application/octet-stream").split(";")[0]
        cap = self.settings.max_put_bytes
        declared = header(scope, b"content-length")
        if declared is not None and not declared.isdigit():
            raise RonError(ErrorCode.BAD_REQUEST, "Content-Length is not a number")
        grant: Grant | None = scope["state"].get("grant")
        self.guard.authorize(
            grant, method="PUT", path="/put", nbytes=int(declared) if declared else None
        )
        if grant is not None and grant.max_bytes is not None:
            cap = min(cap, grant.max_bytes)  # a body of unknown size stops at the caveat
        if declared is not None and int(declared) > cap:
            raise RonError(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the {cap}-byte cap")
        coding = parse_content_encoding(header(scope, b"content-encoding"))
        exchange: Exchange = scope["state"]["exchange"]
        admitted: Admitted | None = scope["state"].get("admitted")
        if admitted is not None and declared is not None:
            self.admission.charge_bytes(admitted, "/put", int(declared))
        idle = self.admission.config.read_idle_timeout_s

        async def raw_body() -> AsyncIterator[bytes]:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        message = await receive()
                except TimeoutError:
                    self.metrics.rejected_total.labels("read_timeout").inc()
                    raise RonError(ErrorCode.TIMEOUT, "request body stalled") from None
                if message["type"] == "http.disconnect":
                    raise RonError(ErrorCode.BAD_REQUEST, "client disconnected mid-body")
                chunk = message.get("body", b"")
                exchange.received += len(chunk)
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        body = raw_body()
        if coding is not None:
            cfg = self.admission.config
            body = decode_body(
                body,
                coding,
                max_decoded=max(cfg.max_decoded_bytes, cap),
                max_ratio=cfg.max_decode_ratio,
            )
        manifest, created = await self.store.put_stream(
            body,
            tld=tld,
            mime=mime,
            original_filename=filename,
            license=license_,
            relations=relations,
            max_bytes=cap,
            private=private,
        )
        if admitted is not None and declared is None:
            with contextlib.suppress(RonError):  # already received: charge, never refuse
                self.admission.charge_bytes(admitted, "/put", exchange.received)
        bundle = self.store.relpath(self.store.bundle_dir(manifest.address))
        await self.overlay.register(manifest_summary(manifest, bundle))
        address = manifest.address.canonical
        location = f"/o/{manifest.address.with_tld if tld else address}"
        reply = {"address": address, "bytes": manifest.bytes, "tld": manifest.tld}
        # A bundle this PUT created is as asked; an existing one says what it is.
        marker = self.store.bundle_dir(manifest.address) / PRIVATE_MARKER
        actual = private if created else marker.exists()
        if private or actual:
            # The first PUT of these bytes decided; a private PUT of bytes already public
            # learns here that they stay public.
            reply["private"] = actual
        await respond(
            send,
            201,
            [(b"content-type", b"application/json"), (b"location", location.encode())],
            json_body(reply),
        )


def validator_headers(info: ObjectInfo, etag: bytes) -> Headers:
    """What a 304 and a 200 of an object share."""
    return [
        (b"etag", etag),
        (b"cache-control", PRIVATE_IMMUTABLE if info.private else IMMUTABLE),
        (b"vary", b"Accept-Encoding"),
    ]


def content_headers(info: ObjectInfo, base: Headers, pay_headers: Headers) -> Headers:
    """The headers of a full or partial response with the object's payload."""
    return [
        *base,
        (b"content-type", info.manifest.mime.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"accept-ranges", b"bytes"),
        *pay_headers,
    ]


def _flag(value: str | None, name: str) -> bool:
    """A boolean query parameter: absent, ``0``/``false`` or ``1``/``true``."""
    if value is None or value in ("0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be true or false")


# Addresses are parsed on every GET and the same few are asked for again and again; a
# bounded cache of the parse (a pure function of the text) skips the regex. Bad input
# raises, and exceptions are never cached.
parse_address_cached = functools.lru_cache(maxsize=4096)(parse_address)


def split_object_path(rest: str) -> tuple[Address, str]:
    """``<addr>[/<rel>]`` -> (address, rel); a rel that could leave the bundle is 400."""
    addr_text, slash, rel = rest.partition("/")
    addr = parse_address_cached(addr_text)
    if not slash or rel in ("", "payload.bin"):
        return addr, ""
    if "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise RonError(ErrorCode.BAD_REQUEST, "path leaves the bundle")
    # Split by hand: PurePosixPath drops "." and empty segments, so "./x" would pass.
    parts = rel.split("/")
    if any(p in ("..", ".") for p in parts) or len(parts) != 1:
        raise RonError(ErrorCode.BAD_REQUEST, "path leaves the bundle")
    if rel != MANIFEST_NAME:
        raise RonError(ErrorCode.NOT_FOUND, f"bundle has no file {rel!r}")
    return addr, rel


def _v1_route(path: str) -> str:
    """A low-cardinality route label for /v1 paths: the first two segments only."""
    parts = path.split("/")
    return "/".join(parts[:3]) + ("/..." if len(parts) > 3 else "")


def _hot(routes: MailboxHotRoutes, guard: Guard, handler: HotHandler, topic: str) -> _Handler:
    """A hot mailbox route as a gateway handler: served without the /v1 app."""

    async def serve(scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        scope["state"]["guard"] = guard
        await routes.serve(handler, scope, receive, send, corr, topic)

    return serve


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


async def _respond_head(send: Send, status: int, headers: Headers, length: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(length).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _method_not_allowed(allow: str) -> Callable[[Scope, Receive, Send, str], Awaitable[None]]:
    async def handler(scope: Scope, receive: Receive, send: Send, corr: str) -> None:
        raise RonError(ErrorCode.BAD_REQUEST, f"method not allowed; use {allow}")

    return handler


async def _not_found(scope: Scope, receive: Receive, send: Send, corr: str) -> None:
    raise RonError(ErrorCode.NOT_FOUND, "no such route")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = [
    "Exchange",
    "GatewayApp",
    "IntegrityError",
    "content_headers",
    "parse_address_cached",
    "split_object_path",
    "validator_headers",
]
