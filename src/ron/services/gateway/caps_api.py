"""``GET /v1/caps/revocations?since=N`` on the gateway: the revocation feed for peers.

Revocation entries are token ids (hashes), not tokens, so the feed is public: a peer or
a cache that has seen sequence ``N`` catches up with one call and then refuses what it
lists, without waiting for a restart (CAPABILITIES.md §7).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ron.auth.verifier import Verifier
from ron.services.base import ServiceContext


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    verifier = Verifier.from_data_dir(ctx.data_dir, overlap_s=ctx.config.caps.rotation_overlap_s)

    async def revocations(request: Request) -> Response:
        return JSONResponse(verifier.feed(request.query_params))

    return [Route("/v1/caps/revocations", revocations, methods=["GET"])]
