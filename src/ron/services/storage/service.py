"""StorageService: the one process that turns staged payloads into bundles.

Gateways write uploads into bundles themselves, through the same crash-only
BundleWriter (the body never crosses a process boundary; it is hashed as it is written).
This service owns everything else that changes the object directory: sweeping stale
staging dirs at start, quarantining corrupted bundles, scrubbing; and it streams
bundles to callers in other processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ron.ipc import CallContext, IpcClient, StreamReply
from ron.proto.address import Address, parse_address
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import Manifest
from ron.services.base import Handler, Service, ServiceContext
from ron.services.storage.store import ObjectStore, iter_file

log = logging.getLogger("ron.storage")


def manifest_summary(manifest: Manifest, bundle: str) -> dict[str, Any]:
    return {
        "hex": manifest.hash_hex,
        "tld": manifest.tld,
        "bytes": manifest.bytes,
        "mime": manifest.mime,
        "created_utc": manifest.created_utc,
        "bundle": bundle,
    }


class StorageService(Service):
    name = "storage"

    async def start(self, ctx: ServiceContext) -> None:
        self.store = ObjectStore(ctx.data_dir)
        self.store.ensure_dirs()
        swept = self.store.sweep_staging()
        if swept:
            log.info("swept stale staging dirs", extra={"count": swept})
        m = ctx.metrics
        self._stored = m.counter("storage_objects_stored_total", "New bundles written.")
        self._quarantined = m.counter(
            "storage_quarantined_total", "Bundles moved aside after failing verification."
        )
        self._scrub_bad = m.counter("scrub_corrupt_total", "Corrupted bundles found by scrub.")
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        return None

    def health(self) -> tuple[bool, str]:
        if not os.access(self.store.objects, os.W_OK):
            return False, "objects directory not writable"
        return True, "ok"

    # --- typed interface --------------------------------------------------------------

    async def stat(self, addr: Address) -> dict[str, Any] | None:
        bundle = self.store.bundle_dir(addr)
        manifest = self.store.read_manifest_at(bundle)
        return None if manifest is None else manifest_summary(manifest, self.store.relpath(bundle))

    async def quarantine(self, addr: Address, reason: str) -> bool:
        moved = self.store.quarantine(addr, reason) is not None
        if moved:
            self._quarantined.inc()
        return moved

    async def scrub(self) -> dict[str, Any]:
        """Re-verify every bundle; quarantine the corrupted ones."""
        checked = 0
        bad: list[str] = []
        for bundle in list(self.store.iter_bundles()):
            result = await asyncio.to_thread(self.store.scrub_bundle, bundle)
            if result is None:
                continue
            checked += 1
            manifest, ok = result
            if not ok:
                self._scrub_bad.inc()
                self._quarantined.inc()
                bad.append(manifest.address.canonical)
        return {"checked": checked, "corrupt": bad}

    # --- IPC --------------------------------------------------------------------------

    def handlers(self) -> Mapping[str, Handler]:
        async def stat(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.stat(parse_address(str(args["addr"])))

        async def quarantine(args: dict[str, Any], ctx: CallContext) -> Any:
            addr = parse_address(str(args["addr"]))
            return await self.quarantine(addr, str(args.get("reason", "")))

        async def scrub(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.scrub()

        async def get(args: dict[str, Any], ctx: CallContext) -> Any:
            addr = parse_address(str(args["addr"]))
            info = await self.stat(addr)
            if info is None:
                raise RonError(ErrorCode.NOT_FOUND, f"no object {addr.canonical}")
            path = self.store.data_dir / info["bundle"] / "payload.bin"

            async def chunks() -> AsyncIterator[bytes]:
                if info["bytes"]:
                    async for c in iter_file(path, 0, info["bytes"] - 1):
                        yield c

            return StreamReply(info, chunks())

        return {
            "stat": stat,
            "quarantine": quarantine,
            "scrub": scrub,
            "get": get,
        }


class StorageClient:
    """StorageService in another process."""

    def __init__(self, ipc: IpcClient) -> None:
        self._ipc = ipc

    async def stat(self, addr: Address) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._ipc.call("stat", {"addr": addr.with_tld})
        return result

    async def quarantine(self, addr: Address, reason: str) -> bool:
        return bool(await self._ipc.call("quarantine", {"addr": addr.with_tld, "reason": reason}))

    async def scrub(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._ipc.call("scrub", timeout=3600)
        return result
