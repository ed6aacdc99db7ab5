"""OverlayService: the write and control half of the overlay.

A PUT has two steps and a crash between them is harmless: the bundle is made durable
first (renamed into place by the writer), then ``register`` points the index at it. A
bundle without an index row is invisible until the retried PUT registers it; an index
row never points at a bundle that is not fully on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ron.auth import audit
from ron.auth.audit import AuditLog
from ron.auth.files import AuthPaths
from ron.ipc import CallContext, IpcClient
from ron.proto.address import Address, parse_address
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import Handler, Service, ServiceContext
from ron.services.index.db import IndexRecord

log = logging.getLogger("ron.overlay")


class OverlayService(Service):
    name = "overlay"

    async def start(self, ctx: ServiceContext) -> None:
        self._peers = ctx.peers
        self._puts = ctx.metrics.counter("overlay_puts_total", "PUTs completed.", ["result"])
        self._audit = AuditLog(AuthPaths(ctx.data_dir).audit_log, actor="overlay")

    async def stop(self) -> None:
        return None

    async def register(self, summary: Mapping[str, Any]) -> bool:
        """Point the index at a bundle that is already durable on disk."""
        new = bool(
            await self._peers.get("index").put(
                IndexRecord(
                    hex=str(summary["hex"]),
                    tld=str(summary["tld"]),
                    bundle=str(summary["bundle"]),
                    bytes=int(summary["bytes"]),
                    mime=str(summary["mime"]),
                    created_utc=str(summary["created_utc"]),
                )
            )
        )
        self._puts.labels("new" if new else "existing").inc()
        return new

    async def resolve(self, addr: Address) -> dict[str, Any]:
        record = await self._peers.get("index").resolve(addr.hex)
        if record is None:
            raise RonError(ErrorCode.NOT_FOUND, f"no object {addr.canonical} on this node")
        result: dict[str, Any] = record.to_dict()
        return result

    async def quarantine(self, addr: Address, reason: str) -> bool:
        moved = bool(await self._peers.get("storage").quarantine(addr, reason))
        await self._peers.get("index").delete(addr.hex)
        if moved:
            self._record(addr.canonical, reason)
        return moved

    def _record(self, address: str, reason: str) -> None:
        """Quarantines go to the audit log: an operator must be able to tell data that
        was withdrawn for corruption from data that was never there."""
        try:
            self._audit.append(audit.QUARANTINE, {"address": address, "reason": reason[:256]})
        except (OSError, RonError):
            log.exception("audit record of a quarantine not written")

    async def scrub(self) -> dict[str, Any]:
        report: dict[str, Any] = await self._peers.get("storage").scrub()
        for canonical in report.get("corrupt", []):
            await self._peers.get("index").delete(parse_address(canonical).hex)
            self._record(canonical, "scrub found a mismatch")
        return report

    def handlers(self) -> Mapping[str, Handler]:
        async def register(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.register(args["summary"])

        async def resolve(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.resolve(parse_address(str(args["addr"])))

        async def quarantine(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.quarantine(
                parse_address(str(args["addr"])), str(args.get("reason", ""))
            )

        async def scrub(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.scrub()

        return {
            "register": register,
            "resolve": resolve,
            "quarantine": quarantine,
            "scrub": scrub,
        }


class OverlayClient:
    """OverlayService in another process."""

    def __init__(self, ipc: IpcClient) -> None:
        self._ipc = ipc

    async def register(self, summary: Mapping[str, Any]) -> bool:
        return bool(await self._ipc.call("register", {"summary": dict(summary)}))

    async def resolve(self, addr: Address) -> dict[str, Any]:
        result: dict[str, Any] = await self._ipc.call("resolve", {"addr": addr.with_tld})
        return result

    async def quarantine(self, addr: Address, reason: str) -> bool:
        return bool(await self._ipc.call("quarantine", {"addr": addr.with_tld, "reason": reason}))

    async def scrub(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._ipc.call("scrub", timeout=3600)
        return result
