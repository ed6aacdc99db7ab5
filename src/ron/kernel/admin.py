"""The kernel's admin HTTP server: /healthz, /readyz, /metrics and the operator API.

It binds loopback by default because ``/v1/services/{name}/restart`` and
``/v1/config/reload`` change the node. Served by uvicorn inside the kernel's own event
loop; uvicorn's signal capture is disabled so the kernel alone decides how to stop.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ron.kernel.health import HealthState
from ron.kernel.metrics import CONTENT_TYPE
from ron.proto.envelope import ErrorCode, envelope, sane_corr_id


class AdminBackend(Protocol):
    """What the admin routes need from the node."""

    health: HealthState

    async def metrics_text(self) -> bytes: ...
    def status(self) -> dict[str, Any]: ...
    async def restart_service(self, name: str) -> bool: ...
    async def reload_config(self) -> tuple[bool, str]: ...
    def admin_routes(self) -> list[Route]:
        """Further routes the node adds (capability administration)."""
        ...


def _error(request: Request, code: ErrorCode, message: str, status: int) -> JSONResponse:
    corr = sane_corr_id(request.headers.get("x-corr-id"))
    return JSONResponse(
        envelope(code, message, corr), status_code=status, headers={"X-Corr-Id": corr}
    )


def health_routes(health: HealthState, metrics_text: Callable[[], Awaitable[bytes]]) -> list[Route]:
    """/healthz, /readyz and /metrics; shared with the gateway, which serves them too."""

    async def healthz(request: Request) -> Response:
        snap = health.snapshot()
        return JSONResponse({"status": "ok", "services": snap["services"]})

    async def readyz(request: Request) -> Response:
        snap = health.snapshot()
        if snap["ready"]:
            return JSONResponse(snap)
        retry = str(random.randint(1, 5))
        return JSONResponse(snap, status_code=503, headers={"Retry-After": retry})

    async def metrics(request: Request) -> Response:
        return Response(await metrics_text(), media_type=CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET", "HEAD"]),
    ]


def build_admin_app(backend: AdminBackend) -> Starlette:
    async def status(request: Request) -> Response:
        return JSONResponse(backend.status())

    async def restart(request: Request) -> Response:
        name = request.path_params["name"]
        if not await backend.restart_service(name):
            return _error(request, ErrorCode.NOT_FOUND, f"no service named {name!r}", 404)
        return JSONResponse({"restarting": name}, status_code=202)

    async def reload(request: Request) -> Response:
        ok, message = await backend.reload_config()
        if not ok:
            return _error(request, ErrorCode.BAD_REQUEST, message, 400)
        return JSONResponse({"reloaded": True, "message": message})

    routes = [
        *health_routes(backend.health, backend.metrics_text),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/services/{name}/restart", restart, methods=["POST"]),
        Route("/v1/config/reload", reload, methods=["POST"]),
        *backend.admin_routes(),
    ]
    return Starlette(routes=routes)


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the kernel owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: Any, sock: socket.socket, *, log_level: str = "warning") -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="none",
        timeout_graceful_shutdown=5,
    )
    return EmbeddedServer(config)
