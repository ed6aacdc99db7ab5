"""GatewayService: uvicorn (httptools, uvloop) serving GatewayApp on the kernel's socket.

The listening socket is the kernel's: a restarted gateway picks up the same port and
the connections that queued in the backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from ron.auth.guard import Guard
from ron.kernel.admin import EmbeddedServer
from ron.kernel.config import Config
from ron.services.balance import ConnectionShares
from ron.services.base import Service, ServiceContext
from ron.services.gateway.accesslog import AccessLog
from ron.services.gateway.admission import Admission
from ron.services.gateway.app import GatewayApp
from ron.services.gateway.balance import BalancedServer
from ron.services.gateway.fastlane import fast_lane
from ron.services.gateway.mailbox_hot import MailboxHotRoutes
from ron.services.gateway.protocol import guarded_protocol
from ron.services.gateway.v1 import build_v1_app
from ron.services.index.service import index_path
from ron.services.mailbox.attached import mailbox_of
from ron.services.overlay.reader import ContentReader, QuarantineReporter
from ron.services.registry import worker_counts, worker_slot
from ron.services.storage.store import ObjectStore


class GatewayService(Service):
    name = "gateway"

    async def start(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._settings = ctx.config.gateway
        store = ObjectStore(ctx.data_dir)
        store.ensure_dirs()
        self.reader = ContentReader(
            store, index_path(ctx.config), ctx.metrics, on_corrupt=QuarantineReporter(ctx.peers)
        )
        kernel = ctx.peers.get("kernel")
        self.access_log = AccessLog(ctx.name)
        self.admission = Admission(
            ctx.config.gateway, ctx.metrics, ctx.run_dir, worker_slot(ctx.name), kernel.ready
        )
        await self.admission.prime()
        self.guard = Guard(
            ctx.data_dir,
            ctx.config.caps,
            on_refusal=lambda reason: ctx.metrics.rejected_total.labels(reason).inc(),
        )
        app = GatewayApp(
            reader=self.reader,
            store=store,
            overlay=ctx.peers.get("overlay"),
            metrics=ctx.metrics,
            settings=self,
            ready=kernel.ready,
            node_metrics=kernel.metrics_text,
            v1=build_v1_app(ctx),
            mailbox=MailboxHotRoutes(mailbox_of(ctx)),
            admission=self.admission,
            guard=self.guard,
            access_log=self.access_log,
        )
        # Make the mailbox's client now (importing its module costs a few hundred ms
        # here), not in the first mailbox request; a node without one has none to make.
        with contextlib.suppress(KeyError):
            ctx.peers.get("mailbox")
        gw = ctx.config.gateway
        protocol = guarded_protocol(
            max_header_bytes=gw.max_header_bytes,
            header_timeout_s=gw.header_timeout_s,
            on_reject=lambda reason: ctx.metrics.rejected_total.labels(reason).inc(),
            fast_lane=fast_lane(app),
        )
        config = uvicorn.Config(
            app,
            loop="none",
            http=protocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=int(ctx.config.gateway.keepalive_s),
            timeout_graceful_shutdown=int(ctx.config.kernel.drain_timeout_s),
            h11_max_incomplete_event_size=64 * 1024,
            # Not behind a proxy by default: X-Forwarded-For from a client must never
            # pick the anonymous tenant (and so the quota bucket) it is counted in.
            proxy_headers=False,
            server_header=False,
        )
        workers = worker_counts(ctx.config)["gateway"]
        self._shares: ConnectionShares | None = None
        if workers > 1:
            # Workers share the socket; keep their shares of connections even.
            self._shares = ConnectionShares(
                ctx.run_dir / "gateway-connections.counters", worker_slot(ctx.name), workers
            )
            self._server: EmbeddedServer = BalancedServer(config, self._shares)
        else:
            self._server = EmbeddedServer(config)
        sock = ctx.listeners["http"]
        self._serve = asyncio.create_task(self._server.serve(sockets=[sock]))
        # uvicorn exposes readiness only as a flag; poll it briefly.
        while not self._server.started and not self._serve.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._serve.done():
            self._serve.result()

    @property
    def enforce_payments(self) -> bool:
        return self._settings.enforce_payments

    @property
    def max_put_bytes(self) -> int:
        return self._settings.max_put_bytes

    async def reconfigure(self, config: Config) -> None:
        self._settings = config.gateway
        self.admission.reconfigure(config.gateway)
        self.guard.reconfigure(config.caps)
        await mailbox_of(self._ctx).reconfigure(config)

    def degraded(self) -> str | None:
        """Reported to the kernel, so the node's /readyz shows it too."""
        cap = self._settings.max_inflight
        n = self.admission.inflight()
        if n >= self._settings.degraded_ratio * cap:
            return f"inflight {n} of {cap}"
        return None

    def health(self) -> tuple[bool, str]:
        if self._serve.done():
            return False, "http server stopped"
        return True, "ok"

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._serve
        self.reader.close()
        self.admission.close()
        mailbox_of(self._ctx).close()
        if self._shares is not None:
            self._shares.close()
        self.access_log.flush()
