"""OmnigateService: the OAP/1 server on the kernel's ``oap`` socket.

TLS 1.3 with ALPN ``ron/1`` unless ``omnigate.tls = false`` (plain TCP is never a
fallback, only a configured choice). Storage GETs read verified bytes in-process through
the overlay's :class:`ContentReader`, exactly as the HTTP gateway does; a corrupted
bundle is reported to the overlay for quarantine.

The listening socket is the kernel's and is duplicated here, so stopping this service
(or a restart in ``--single-process`` mode) never closes the kernel's copy: queued
connections wait in the backlog for the next incarnation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ron.auth.guard import Guard
from ron.kernel.config import Config, OmnigateConfig
from ron.proto.oap import AppId
from ron.services.balance import BalancedListener, ConnectionShares
from ron.services.base import Service, ServiceContext
from ron.services.index.service import index_path
from ron.services.mailbox.attached import mailbox_of
from ron.services.omnigate.apps import StorageApp
from ron.services.omnigate.gate import App, Gate
from ron.services.omnigate.mailbox_app import MailboxApp, is_subscribe
from ron.services.omnigate.server import OapServerProtocol
from ron.services.omnigate.tls import TlsFiles, ensure_dev_certs, server_context
from ron.services.omnigate.workers import SharedGateState
from ron.services.overlay.reader import ContentReader, QuarantineReporter
from ron.services.registry import worker_slot
from ron.services.storage.store import ObjectStore

log = logging.getLogger("ron.omnigate")


def tls_files(config: Config) -> TlsFiles:
    """The certificate files omnigate serves, generating the development ones if needed.

    Operator-supplied ``cert_file`` + ``key_file`` are used as they are; otherwise the
    development CA and server certificate live under ``<data_dir>/tls/``.
    """
    settings = config.omnigate
    if settings.cert_file is not None and settings.key_file is not None:
        return TlsFiles(settings.cert_file, settings.key_file, settings.ca_file)
    return ensure_dev_certs(config.data_dir, ca=settings.ca_file)


class OmnigateService(Service):
    name = "omnigate"

    async def start(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        settings = ctx.config.omnigate
        self._tls = settings.tls
        store = ObjectStore(ctx.data_dir)
        store.ensure_dirs()
        self.reader = ContentReader(
            store, index_path(ctx.config), ctx.metrics, on_corrupt=QuarantineReporter(ctx.peers)
        )
        self.guard = Guard(ctx.data_dir, ctx.config.caps, on_refusal=self._refused)
        self.shared: SharedGateState | None = None
        if settings.workers > 1:
            slot = worker_slot(ctx.name)
            self.shared = SharedGateState(ctx.run_dir, slot, settings.quota_table_size)
        self.gate = Gate(
            settings, ctx.metrics, self._apps(), tls=self._tls, guard=self.guard, shared=self.shared
        )
        ssl_context = None
        if self._tls:
            self._files = await asyncio.to_thread(tls_files, ctx.config)
            ssl_context = server_context(self._files)
        loop = asyncio.get_running_loop()
        self._sock = ctx.listeners["oap"].dup()
        handshake_s = settings.handshake_timeout_s if self._tls else None
        self._shares: ConnectionShares | None = None
        self._server: asyncio.Server | BalancedListener
        if settings.workers > 1:
            # Workers share the socket; keep their shares of connections even (an app
            # with two connections would otherwise often land both on one worker).
            self._shares = ConnectionShares(
                ctx.run_dir / "omnigate-connections.counters",
                worker_slot(ctx.name),
                settings.workers,
            )
            self._server = BalancedListener(
                self._sock,
                self._protocol,
                self.gate.live,
                self._shares,
                ssl=ssl_context,
                ssl_handshake_timeout=handshake_s,
            )
        else:
            self._server = await loop.create_server(
                self._protocol,
                sock=self._sock,
                ssl=ssl_context,
                ssl_handshake_timeout=handshake_s,
                start_serving=True,
            )
        self._sweeper = asyncio.create_task(self._sweep_handshakes())

    def _apps(self) -> dict[int, App]:
        """Application id -> handler."""
        storage = StorageApp(self.reader, self._tiles_root, self.guard)
        return {
            AppId.STORAGE: App("storage", storage, eager=True, fast_get=storage.fast_get),
            AppId.MAILBOX: App(
                "mailbox",
                MailboxApp(mailbox_of(self._ctx), self.guard),
                long_lived=is_subscribe,
            ),
        }

    def _refused(self, reason: str) -> None:
        self.gate.reject(reason)

    def _tiles_root(self) -> Path | None:
        return self.gate.settings.tiles_root

    def _protocol(self) -> OapServerProtocol:
        proto = OapServerProtocol(self.gate)
        if self._tls:
            self.gate.handshaking[proto] = asyncio.get_running_loop().time()
        return proto

    async def _sweep_handshakes(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.1, self.gate.settings.handshake_timeout_s / 2))
            self.gate.sweep_handshakes(loop.time())

    @property
    def settings(self) -> OmnigateConfig:
        return self.gate.settings

    async def reconfigure(self, config: Config) -> None:
        """Limits, quotas, timeouts and the tiles root follow a reload; ``tls``, the
        certificate paths and ``workers`` need a restart (the listener was set up with
        them), and so does ``quota_table_size`` with several workers (a shared file)."""
        self.gate.apply(config.omnigate)
        self.guard.reconfigure(config.caps)
        await mailbox_of(self._ctx).reconfigure(config)

    def health(self) -> tuple[bool, str]:
        if not self._server.is_serving():
            return False, "oap server stopped"
        return True, "ok"

    async def stop(self) -> None:
        """Stop accepting, let admitted requests finish (up to the drain timeout), close."""
        self._sweeper.cancel()
        self._server.close()
        for proto in list(self.gate.live):
            proto.drop_pending()
        if not await self.gate.drain(self._ctx.config.kernel.drain_timeout_s):
            log.warning("omnigate stopped with requests still in flight")
        for proto in list(self.gate.live):
            proto.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self.reader.close()
        mailbox_of(self._ctx).close()
        if self.shared is not None:
            self.shared.close()
        if self._shares is not None:
            self._shares.close()
