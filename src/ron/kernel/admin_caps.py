"""Capability administration over the admin address: mint, rotate, revoke, and the feed.

This is how ``ron cap ... --admin URL`` reaches a running node, and the only way to an
amnesia node, whose keys exist in its memory-backed directory alone. The admin server
binds loopback by default, and every change here additionally needs the **owner
token** (tenant ``owner``, not attenuated to exclude this route): being on the machine
is not enough, being the node's owner is. Each action goes through
:class:`~ron.auth.Authority`, so it is audited exactly like the offline CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ron.auth.authority import Authority, token_caveats
from ron.auth.owner import OWNER_TENANT
from ron.auth.token import Token
from ron.auth.verifier import bearer_token
from ron.kernel.config import CapsConfig
from ron.proto.envelope import ErrorCode, RonError, envelope, sane_corr_id

__all__ = ["caps_routes"]

MAX_BODY = 16 * 1024
MAX_TTL_S = 10 * 365 * 86400
_MINT_KEYS = {"tenant", "methods", "path", "addr", "topic", "aud", "max_bytes", "ttl_s"}


def caps_routes(
    data_dir: Path, caps: Callable[[], CapsConfig], node_id: Callable[[], str | None]
) -> list[Route]:
    """The /v1/caps routes; ``caps`` and ``node_id`` are read per request (reloads)."""

    def authority() -> Authority:
        return Authority(data_dir, overlap_s=caps().rotation_overlap_s, actor="admin")

    def owner(request: Request, auth: Authority) -> None:
        grant = auth.verifier().authenticate(
            bearer_token(request.headers.get("authorization")), audience=node_id()
        )
        if grant.tenant != OWNER_TENANT:
            raise RonError(ErrorCode.FORBIDDEN, "only the node's owner token may do this")
        grant.authorize(method="POST", path=request.url.path)

    async def revocations(request: Request) -> Response:
        async def act() -> dict[str, Any]:
            return authority().verifier().feed(request.query_params)

        return await _answer(request, act)

    async def mint(request: Request) -> Response:
        async def act() -> dict[str, Any]:
            auth = authority()
            owner(request, auth)
            return _mint(auth, await _json(request), node_id())

        return await _answer(request, act)

    async def rotate(request: Request) -> Response:
        async def act() -> dict[str, Any]:
            auth = authority()
            owner(request, auth)
            key, retired = auth.rotate()
            until = retired.valid_until(auth.overlap_s) if retired else None
            return {
                "key_id": key.key_id,
                "retired": retired.key_id if retired else None,
                "retired_valid_until": until,
            }

        return await _answer(request, act)

    async def revoke(request: Request) -> Response:
        async def act() -> dict[str, Any]:
            auth = authority()
            owner(request, auth)
            body = await _json(request)
            token_id = body.get("token_id")
            if isinstance(body.get("token"), str):
                token_id = Token.parse(body["token"]).token_id_hex
            if not isinstance(token_id, str):
                raise RonError(ErrorCode.BAD_REQUEST, "give token_id or token")
            entry, new = auth.revoke(token_id)
            return {"seq": entry.seq, "token_id": entry.token_id, "new": new}

        return await _answer(request, act)

    return [
        Route("/v1/caps/revocations", revocations, methods=["GET"]),
        Route("/v1/caps/mint", mint, methods=["POST"]),
        Route("/v1/caps/rotate", rotate, methods=["POST"]),
        Route("/v1/caps/revoke", revoke, methods=["POST"]),
    ]


def _mint(auth: Authority, body: dict[str, Any], node_id: str | None) -> dict[str, Any]:
    unknown = set(body) - _MINT_KEYS
    if unknown:
        raise RonError(ErrorCode.BAD_REQUEST, f"unknown field {sorted(unknown)[0]!r}")
    tenant = body.get("tenant")
    ttl = body.get("ttl_s", 3600)
    methods = body.get("methods") or []
    if not isinstance(tenant, str):
        raise RonError(ErrorCode.BAD_REQUEST, "tenant is required")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
        raise RonError(ErrorCode.BAD_REQUEST, f"ttl_s must be an integer 1..{MAX_TTL_S}")
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise RonError(ErrorCode.BAD_REQUEST, "methods must be a list of strings")
    for key in ("path", "addr", "topic", "aud"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise RonError(ErrorCode.BAD_REQUEST, f"{key} must be a string")
    max_bytes = body.get("max_bytes")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0
    ):
        raise RonError(ErrorCode.BAD_REQUEST, "max_bytes must be a non-negative integer")
    now = time.time()
    aud = node_id if body.get("aud") == "self" else body.get("aud")
    caveats = token_caveats(
        tenant=tenant,
        methods=methods,
        path=body.get("path"),
        addr=body.get("addr"),
        topic=body.get("topic"),
        aud=aud,
        max_bytes=max_bytes,
        expires=int(now) + ttl,
    )
    token = auth.mint(caveats, now=now)
    return {
        "token": token.serialize(),
        "token_id": token.token_id_hex,
        "key_id": token.key_id,
        "expires": int(now) + ttl,
    }


async def _json(request: Request) -> dict[str, Any]:
    """A small JSON object body (empty: ``{}``); anything else is 400 or 413."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise RonError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RonError(ErrorCode.BAD_REQUEST, "body is not JSON") from None
    if not isinstance(body, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    return body


async def _answer(request: Request, act: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
    corr = sane_corr_id(request.headers.get("x-corr-id"))
    try:
        return JSONResponse(await act(), headers={"X-Corr-Id": corr})
    except RonError as exc:
        return JSONResponse(
            envelope(exc.code, exc.message, corr),
            status_code=exc.status,
            headers={"X-Corr-Id": corr},
        )
