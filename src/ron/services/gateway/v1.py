"""The /v1 JSON APIs of the gateway, one Starlette app assembled from each feature's routes.

Each feature (mailbox, capabilities...) contributes a list of routes built from the
service context; this module only puts them together and makes every error, including
Starlette's own 404/405, leave as the one envelope.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ron.proto.envelope import CODE_OF_STATUS, ErrorCode, RonError, envelope, sane_corr_id
from ron.services.base import ServiceContext


def corr_id_of(request: Request) -> str:
    """The request's correlation id, as the gateway settled it."""
    corr = request.scope.get("state", {}).get("corr_id")
    return str(corr) if corr else sane_corr_id(request.headers.get("x-corr-id"))


def error_response(request: Request, exc: RonError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(exc.envelope(corr_id_of(request)), status_code=exc.status, headers=headers)


async def _ron_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RonError)
    return error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = CODE_OF_STATUS.get(exc.status_code, ErrorCode.BAD_REQUEST)
    status = exc.status_code if exc.status_code in (404, 405) else 400
    if status == 405:
        code = ErrorCode.BAD_REQUEST
    return JSONResponse(envelope(code, str(exc.detail), corr_id_of(request)), status_code=status)


def route_builders() -> list[str]:
    """``module:function`` of each feature's ``routes(ctx) -> list[BaseRoute]``."""
    return ["ron.services.gateway.mailbox_api:routes", "ron.services.gateway.caps_api:routes"]


def build_v1_app(ctx: ServiceContext) -> Starlette | None:
    """The /v1 app for this gateway, or None when no feature contributes routes."""
    import importlib

    routes: list[BaseRoute] = []
    for target in route_builders():
        module_name, _, attr = target.partition(":")
        routes.extend(getattr(importlib.import_module(module_name), attr)(ctx))
    if not routes:
        return None
    return Starlette(
        routes=routes,
        exception_handlers={RonError: _ron_error, HTTPException: _http_error},
    )
