"""The fast lane: a plain GET or HEAD of a small object already verified in memory.

Most requests a content gateway serves are the same few small objects fetched again and
again with nothing but a Host header. For those, the ASGI machinery (a scope dict, a
task, a response cycle, two send messages) cost more CPU than everything the gateway
itself does, so the HTTP protocol asks the fast lane first, synchronously, as soon as a
request's headers are complete; the fast lane answers only when the answer is certain
and identical to what :class:`GatewayApp` would send, and otherwise returns None so the
request takes the ordinary path, which owns every error, every conditional and ranged
request, tokens, payments and private objects.

What it serves: GET or HEAD of ``/o/<addr>`` with no body, no token or API key, no
Range, If-Range or If-None-Match, for a public, payment-free object at most
``SMALL_OBJECT`` bytes whose verified bytes are in the reader's cache (their file's stat
unchanged), when identity is the encoding the client gets. Admission is the same
(inflight cap, the client's tenant, its request and byte buckets); a refusal falls back
and is refused there, with the envelope. Metrics and the access line are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ron.proto.envelope import RonError, sane_corr_id
from ron.proto.httpsem import choose_encoding
from ron.services.gateway.app import (
    GatewayApp,
    content_headers,
    parse_address_cached,
    validator_headers,
)
from ron.services.gateway.asgi import Headers

ROUTE = "/o/{addr}"

# Any of these makes the ordinary path decide (ASGI names are lowercase).
_ORDINARY = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"range",
        b"if-range",
        b"if-none-match",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
    }
)

# (headers, raw head lines that follow them, body)
FastReply = tuple[Headers, bytes, bytes]
FastLane = Callable[[str, str, list[tuple[bytes, bytes]], tuple[str, int] | None], FastReply | None]


def fast_lane(app: GatewayApp) -> FastLane:
    """The fast-lane function for ``app``: ``(method, path, headers, client)`` ->
    ``(headers, lines, body)`` of a complete 200 response (``lines``: the RateLimit
    headers, already rendered), or None for the ordinary path."""
    reader = app.reader
    admission = app.admission
    answered = app.metrics.counter(
        "fast_lane_responses_total",
        "Responses the gateway's fast lane sent (cached small objects, plain GET/HEAD).",
    )
    # app.observe() for the only two series the fast lane answers in.
    observe_get = app.tally.adder(ROUTE, "GET", 200)
    observe_head = app.tally.adder(ROUTE, "HEAD", 200)

    def serve(
        method: str, path: str, headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None
    ) -> FastReply | None:
        # The buckets' clock, so the start is also admission's "now" (one clock read
        # fewer; on Linux it is perf_counter's clock, with nanosecond resolution).
        started = time.monotonic()
        if not path.startswith("/o/") or (method != "GET" and method != "HEAD"):
            return None
        corr_raw = accept = None
        for name, value in headers:
            if name in _ORDINARY:
                return None
            # The first of each counts, as on the ordinary path.
            if name == b"x-corr-id" and corr_raw is None:
                corr_raw = value
            elif name == b"accept-encoding" and accept is None:
                accept = value
        rest = path[3:]
        if "/" in rest:
            return None  # a file of the bundle (Manifest.toml): the ordinary path
        try:
            info = reader.stat(parse_address_cached(rest))
        except RonError:
            return None  # bad address, not found: the ordinary path says so
        manifest = info.manifest
        if info.private or (manifest.payment is not None and manifest.payment.required):
            return None
        if not reader.is_small(info):
            return None
        if accept is not None and manifest.encodings:
            codings = [e.coding for e in manifest.encodings]
            if choose_encoding(accept.decode("latin-1"), codings) != "identity":
                return None
        body = reader.cached_small(info)
        if body is None:
            return None  # not yet read and verified in this process
        head = method == "HEAD"
        sent = 0 if head else len(body)
        admitted = admission.admit_read_now(client[0] if client else None, sent, started)
        if admitted is None:
            return None
        tenant, ratelimit = admitted  # RateLimit-Policy and RateLimit, rendered
        corr = sane_corr_id(corr_raw.decode("latin-1") if corr_raw is not None else None)
        etag = f'"b3:{info.hex}"'.encode()
        out = content_headers(info, validator_headers(info, etag), [])
        out.append((b"content-length", str(len(body)).encode()))
        out.append((b"x-corr-id", corr.encode()))
        elapsed = time.monotonic() - started
        if admission.config.request_metrics:
            (observe_head if head else observe_get)(elapsed, sent)
        app.access_log.request(
            corr, ROUTE, method, 200, 0, sent, round(elapsed * 1000, 3), tenant.id
        )
        answered.inc()
        return out, ratelimit, b"" if head else body

    return serve
