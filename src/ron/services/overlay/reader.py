"""The overlay's read path, run inside each gateway and omnigate process.

Reads are the hot path, so they do not cross a process boundary: the reader resolves
addresses through a read-only connection to the index (SQLite WAL allows any number of
reader processes beside the one writer) and reads bundle files directly. Every byte it
yields has been, or is being, verified against the address: see :class:`ObjectStore`.

Bundles are immutable, so resolved manifests are cached (bounded LRU); a cached entry is
dropped when its files disappear (deletion, quarantine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import blake3

from ron.kernel.metrics import Metrics
from ron.proto.address import Address
from ron.proto.bundle import PRIVATE_MARKER
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import Manifest
from ron.services.base import PeerResolver
from ron.services.index.db import IndexDB
from ron.services.storage.store import (
    READ_CHUNK,
    SMALL_OBJECT,
    IntegrityError,
    ObjectStore,
    iter_file,
)

CACHE_ENTRIES = 4096
SMALL_CACHE_BYTES = 32 * 1024 * 1024
"""Bytes of verified small payloads kept in memory (at most ``CACHE_ENTRIES`` of them)."""
SETTLE_NS = 1_000_000_000
"""A payload file changed this recently is not cached: file timestamps are coarse (a
kernel tick), so two writes within one tick could leave the same stamp behind."""
RECHECK_S = 0.25
"""How long the fast paths trust a kept payload's file before they ``stat`` it again
(:meth:`ContentReader.cached_small`); what they serve is the verified bytes either way."""
log = logging.getLogger("ron.overlay")


class QuarantineReporter:
    """``on_corrupt`` for a :class:`ContentReader` in a front-end process: asks the
    overlay (which may live elsewhere) to quarantine a bundle, in the background, so
    the request that found the corruption is never held up by it."""

    def __init__(self, peers: PeerResolver) -> None:
        self._peers = peers
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, addr: Address, reason: str) -> None:
        task = asyncio.create_task(self._report(addr, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, addr: Address, reason: str) -> None:
        try:
            await self._peers.get("overlay").quarantine(addr, reason)
        except Exception as exc:
            log.warning("quarantine request failed", extra={"err": str(exc)})


# Chunks of a streamed payload. Each chunk costs a pass through the ASGI server's send
# path, so 64 KiB chunks left a warm 256 MiB GET CPU-bound at ~1.0-1.8 GB/s; 256 KiB
# reached ~1.8-2.1 GB/s under the same load (bench/bench_gateway.py, docs/PERFORMANCE.md),
# with larger chunks no faster. Memory stays bounded: about two chunks per response.
STREAM_CHUNK = READ_CHUNK


@dataclass(frozen=True)
class ObjectInfo:
    """A resolved bundle: its manifest and where its files are."""

    manifest: Manifest
    bundle: Path

    @property
    def hex(self) -> str:
        return self.manifest.hash_hex

    @property
    def size(self) -> int:
        return self.manifest.bytes

    @property
    def payload(self) -> Path:
        return self.bundle / self.manifest.stored_filename

    @cached_property
    def private(self) -> bool:
        """Marked private when it was stored: served only to capability holders."""
        return (self.bundle / PRIVATE_MARKER).exists()

    @cached_property
    def payload_path(self) -> str:
        """``payload`` as a string, built once: small GETs open it on every request."""
        return str(self.payload)


class ContentReader:
    """Resolve and read verified bytes; shared by every request of a process."""

    def __init__(
        self,
        store: ObjectStore,
        index_path: Path,
        metrics: Metrics,
        on_corrupt: Callable[[Address, str], None] | None = None,
        *,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.store = store
        self._recheck_s = recheck_s
        self._index_path = index_path
        self._index: IndexDB | None = None
        self._cache: OrderedDict[str, ObjectInfo] = OrderedDict()
        # hex -> (payload path, file stamp, verified bytes): see read_small.
        self._small: dict[str, tuple[str, tuple[int, int, int, int], bytes]] = {}
        self._small_bytes = 0
        # hex -> when cached_small last found the kept payload's file unchanged.
        self._checked: dict[str, float] = {}
        self._on_corrupt = on_corrupt
        self.integrity_failures = metrics.counter(
            "integrity_failures_total",
            "Stored bytes that failed BLAKE3 verification (never served).",
            ["kind"],
        )
        self.encoding_fallbacks = metrics.counter(
            "encoding_fallbacks_total",
            "Precompressed variants that failed verification; identity was served.",
            ["coding"],
        )

    def _db(self) -> IndexDB | None:
        if self._index is None:
            if not self._index_path.exists():
                return None
            self._index = IndexDB(self._index_path, readonly=True)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()

    def cached_info(self, addr: Address) -> ObjectInfo | None:
        """The bundle for ``addr`` if it is among those resolved lately, else None;
        never touches the index, never raises (a fast path's question: everything
        else is for :meth:`stat`)."""
        cached = self._cache.get(addr.hex)
        if cached is not None and (addr.tld is None or addr.tld == cached.manifest.tld):
            self._cache.move_to_end(addr.hex)
            return cached
        return None

    def stat(self, addr: Address) -> ObjectInfo:
        """The bundle for ``addr``; ``not_found`` when the node does not hold it."""
        cached = self.cached_info(addr)
        if cached is not None:
            return cached
        bundle: Path | None = None
        db = self._db()
        record = db.resolve(addr.hex) if db is not None else None
        if record is not None and (addr.tld is None or addr.tld == record.tld):
            bundle = self.store.data_dir / record.bundle
        elif addr.tld is not None:
            bundle = self.store.bundle_dir(addr)
        manifest = self.store.read_manifest_at(bundle) if bundle is not None else None
        if manifest is None or bundle is None:
            raise RonError(ErrorCode.NOT_FOUND, f"no object {addr.canonical} on this node")
        info = ObjectInfo(manifest, bundle)
        self._cache[addr.hex] = info
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return info

    def forget(self, hex_digest: str) -> None:
        self._cache.pop(hex_digest, None)
        self._drop_small(hex_digest)

    def corrupt(self, info: ObjectInfo, kind: str, detail: str) -> IntegrityError:
        """Count a failed verification, have the bundle quarantined, return the error."""
        self.integrity_failures.labels(kind).inc()
        self.forget(info.hex)
        self.store.forget_verified(info.hex)
        if self._on_corrupt is not None:
            self._on_corrupt(info.manifest.address, f"{kind}: {detail}")
        return IntegrityError(f"stored object failed verification ({kind}); not served")

    # --- payload (identity) -----------------------------------------------------------

    async def read_small(self, info: ObjectInfo) -> bytes:
        """The whole payload of a small object, verified (see :meth:`small_payload`)."""
        return self.small_payload(info)

    def small_payload(self, info: ObjectInfo) -> bytes:
        """The whole payload of a small object, verified against its address.

        Synchronous: it never waits (a stat, and on a miss a read from the page cache),
        so a caller on the hot path need not create a coroutine for it.

        Verified payloads are kept (bounded) with the stamp of their file: size, mtime,
        ctime and inode. A request whose ``stat`` finds the same stamp gets the kept
        bytes, skipping open, read and hash; any change to the file (rewritten, replaced,
        deleted, quarantined) changes the stamp or fails the ``stat``, and the file is
        read and hashed again. Whatever is served has matched the address.
        """
        path = info.payload_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.forget(info.hex)
            raise RonError(ErrorCode.NOT_FOUND, "object vanished") from None
        kept = self._kept(info, st)
        if kept is not None:
            return kept
        data = self._read_verified_small(info)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= SETTLE_NS:
            self._keep_small(info.hex, path, _stamp(st), data)
        return data

    def cached_small(self, info: ObjectInfo) -> bytes | None:
        """The kept payload of a small object if its file's stamp is unchanged, else
        None; never reads, never raises (the fast lanes' question: a miss, a vanished
        file or a changed one goes to :meth:`small_payload`, which deals with each).

        The file is stat'ed at most every ``RECHECK_S`` per object, as nginx's
        ``open_file_cache_valid`` re-checks open files: a ``stat`` of a bundle's path
        was a tenth of a fast answer's CPU, and what is served is the bytes that matched
        the address when they were kept, whatever happened to the file since. A file
        changed or removed on disk is noticed (and, when corrupt, quarantined by the
        read that follows) within ``RECHECK_S``.
        """
        kept = self._small.get(info.hex)
        if kept is None:
            return None
        now = time.monotonic()
        checked = self._checked.get(info.hex)
        if checked is not None and now - checked < self._recheck_s:
            return kept[2]
        try:
            st = os.stat(info.payload_path)
        except OSError:
            return None
        data = self._kept(info, st)
        if data is not None:
            self._checked[info.hex] = now
        return data

    def _kept(self, info: ObjectInfo, st: os.stat_result) -> bytes | None:
        """The kept payload when it was read from this path with this stamp."""
        kept = self._small.get(info.hex)
        if kept is not None and kept[0] == info.payload_path and kept[1] == _stamp(st):
            return kept[2]
        return None

    def _read_verified_small(self, info: ObjectInfo) -> bytes:
        """Read and hash the payload file (plain ``os.open``/``os.read``: a buffered file
        object plus a path join cost more than the read itself)."""
        try:
            fd = os.open(info.payload_path, os.O_RDONLY)
        except FileNotFoundError:
            self.forget(info.hex)
            raise RonError(ErrorCode.NOT_FOUND, "object vanished") from None
        try:
            data = os.read(fd, info.size + 1)
            # A regular file reads short only at its end; loop in case one ever does not.
            while len(data) < info.size and (more := os.read(fd, info.size + 1 - len(data))):
                data += more
        finally:
            os.close(fd)
        if len(data) != info.size or blake3.blake3(data).hexdigest() != info.hex:
            raise self.corrupt(info, "payload", "hash mismatch")
        return data

    def _keep_small(
        self, hex_digest: str, path: str, stamp: tuple[int, int, int, int], data: bytes
    ) -> None:
        self._drop_small(hex_digest)
        small = self._small
        while small and (
            self._small_bytes + len(data) > SMALL_CACHE_BYTES or len(small) >= CACHE_ENTRIES
        ):
            self._drop_small(next(iter(small)))  # oldest first
        small[hex_digest] = (path, stamp, data)
        self._small_bytes += len(data)

    def _drop_small(self, hex_digest: str) -> None:
        self._checked.pop(hex_digest, None)
        kept = self._small.pop(hex_digest, None)
        if kept is not None:
            self._small_bytes -= len(kept[2])

    def is_small(self, info: ObjectInfo) -> bool:
        return info.size <= SMALL_OBJECT

    def verified_now(self, info: ObjectInfo) -> bool:
        """True when the payload file is byte-for-byte the one verified earlier."""
        try:
            st = os.stat(info.payload)
        except FileNotFoundError:
            return False
        return st.st_size == info.size and self.store.is_verified(info.hex, st)

    async def ensure_verified(self, info: ObjectInfo) -> None:
        """Hash the whole payload (in a thread) unless it is known good; raise if bad."""
        if self.verified_now(info):
            return
        ok = await asyncio.to_thread(self.store.verify_file, info.payload, info.hex, info.size)
        if not ok:
            raise self.corrupt(info, "payload", "hash mismatch")
        self.store.record_verified(info.hex, info.payload)

    async def stream_payload(self, info: ObjectInfo, start: int, end: int) -> AsyncIterator[bytes]:
        """Chunks of ``start..end``; a full read of an unverified object verifies as it
        goes and raises :class:`IntegrityError` *before the last chunk* on a mismatch,
        so a corrupted object is never delivered complete."""
        full = start == 0 and end == info.size - 1
        if not full or self.verified_now(info):
            if not full:
                await self.ensure_verified(info)
            async for chunk in iter_file(info.payload, start, end, STREAM_CHUNK):
                yield chunk
            return
        hasher = blake3.blake3()
        held: bytes | None = None
        async for chunk in iter_file(info.payload, start, end, STREAM_CHUNK):
            hasher.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if hasher.hexdigest() != info.hex:
            raise self.corrupt(info, "payload", "hash mismatch while streaming")
        self.store.record_verified(info.hex, info.payload)
        if held is not None:
            yield held

    # --- precompressed variants -------------------------------------------------------

    async def read_encoding(self, info: ObjectInfo, coding: str) -> bytes | None:
        """A verified precompressed variant, or None (caller falls back to identity)."""
        enc = info.manifest.encoding(coding)
        if enc is None:
            return None
        try:
            with open(info.bundle / enc.filename, "rb") as f:
                data = f.read(enc.bytes + 1)
        except OSError:
            self.encoding_fallbacks.labels(coding).inc()
            return None
        if len(data) != enc.bytes or blake3.blake3(data).hexdigest() != enc.hash_hex:
            self.encoding_fallbacks.labels(coding).inc()
            self.integrity_failures.labels(f"encoding_{coding}").inc()
            return None
        return data


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a payload file: size, mtime, ctime, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
