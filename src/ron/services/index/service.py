"""IndexService (the single writer) and IndexClient (its IPC proxy): one interface."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ron.ipc import CallContext, IpcClient
from ron.kernel.config import Config
from ron.services.base import Handler, Service, ServiceContext
from ron.services.index.db import IndexDB, IndexRecord


def index_path(config: Config) -> Path:
    """``index_db`` from config (``RON_INDEX_DB``), else ``index.db`` in the data dir."""
    return config.index_db if config.index_db is not None else config.data_dir / "index.db"


class IndexAPI(Protocol):
    """What callers may ask of the index, wherever it runs."""

    async def resolve(self, hex_digest: str) -> IndexRecord | None: ...
    async def put(self, record: IndexRecord) -> bool: ...
    async def delete(self, hex_digest: str) -> bool: ...
    async def list(self, after: str = "", limit: int = 100) -> list[IndexRecord]: ...


class IndexService(Service):
    """Owns the writable connection; every write of the node's index goes through here."""

    name = "index"

    async def start(self, ctx: ServiceContext) -> None:
        self._db = IndexDB(index_path(ctx.config))
        self._objects = ctx.metrics.gauge("index_objects", "Addresses in the index.")
        self._objects.set(self._db.count())

    async def stop(self) -> None:
        self._db.close()

    def health(self) -> tuple[bool, str]:
        try:
            self._db.resolve("")
        except Exception as exc:
            return False, f"database error: {exc}"
        return True, "ok"

    async def resolve(self, hex_digest: str) -> IndexRecord | None:
        return self._db.resolve(hex_digest)

    async def put(self, record: IndexRecord) -> bool:
        new = self._db.put(record)
        if new:
            self._objects.inc()
        return new

    async def delete(self, hex_digest: str) -> bool:
        gone = self._db.delete(hex_digest)
        if gone:
            self._objects.dec()
        return gone

    async def list(self, after: str = "", limit: int = 100) -> list[IndexRecord]:
        return self._db.list(after, limit)

    def handlers(self) -> Mapping[str, Handler]:
        async def resolve(args: dict[str, Any], ctx: CallContext) -> Any:
            rec = await self.resolve(str(args["hex"]))
            return None if rec is None else rec.to_dict()

        async def put(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.put(IndexRecord.from_dict(args["record"]))

        async def delete(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.delete(str(args["hex"]))

        async def list_(args: dict[str, Any], ctx: CallContext) -> Any:
            recs = await self.list(str(args.get("after", "")), int(args.get("limit", 100)))
            return [r.to_dict() for r in recs]

        return {"resolve": resolve, "put": put, "delete": delete, "list": list_}


class IndexClient:
    """The index in another process, behind the same interface as IndexService."""

    def __init__(self, ipc: IpcClient) -> None:
        self._ipc = ipc

    async def resolve(self, hex_digest: str) -> IndexRecord | None:
        data = await self._ipc.call("resolve", {"hex": hex_digest})
        return None if data is None else IndexRecord.from_dict(data)

    async def put(self, record: IndexRecord) -> bool:
        return bool(await self._ipc.call("put", {"record": record.to_dict()}))

    async def delete(self, hex_digest: str) -> bool:
        return bool(await self._ipc.call("delete", {"hex": hex_digest}))

    async def list(self, after: str = "", limit: int = 100) -> list[IndexRecord]:
        data = await self._ipc.call("list", {"after": after, "limit": limit})
        return [IndexRecord.from_dict(d) for d in data]
