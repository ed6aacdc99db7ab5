"""``GET /v1/caps/revocations?since=N`` on the gateway: the revocation feed for peers.

Revocation entries are token ids (hashes), not tokens, so the feed is public: a peer or
a cache that has seen sequence ``N`` catches up with one call and then refuses what it
lists, without waiting for a restart (CAPABILITIES.md §7).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ron.auth.revocation import parse_since, revocations_reply
from ron.auth.verifier import Verifier
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import ServiceContext


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    verifier = Verifier.from_data_dir(ctx.data_dir, overlap_s=ctx.config.caps.rotation_overlap_s)

    async def revocations(request: Request) -> Response:
        unknown = set(request.query_params) - {"since"}
        if unknown:
            raise RonError(ErrorCode.BAD_REQUEST, f"unknown parameter {sorted(unknown)[0]!r}")
        since = parse_since(request.query_params.get("since"))
        entries = verifier.revocations_since(since)
        return JSONResponse(revocations_reply(verifier.revocation_seq, entries))

    return [Route("/v1/caps/revocations", revocations, methods=["GET"])]
