"""The object store: bundles on disk, written atomically, read back only when verified.

Writes are crash-only (see :class:`ron.proto.bundle.BundleWriter`): a PUT streams into a
staging directory under ``tmp/`` while the bytes are hashed and compressed; the finished
directory is fsynced and renamed into ``objects/`` in one step. A SIGKILL at any moment
leaves either no bundle or a whole one; stale staging directories are swept at start.

Reads never hand out bytes that were not verified against the address. Small objects
are hashed on every read (cheaper than any bookkeeping). Large ones are verified once,
then remembered in a *verified record* keyed by (size, mtime, inode) of the payload: any
rewrite of the file changes that key, so the next read verifies again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import blake3

from ron.fsutil import atomic_write_bytes
from ron.proto.address import Address
from ron.proto.bundle import BundleWriter, bundle_relpath
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import Manifest, Relations

log = logging.getLogger("ron.storage")

CHUNK = 64 * 1024
READ_CHUNK = 256 * 1024  # disk reads: fewer syscalls; still bounded memory
SMALL_OBJECT = 256 * 1024  # at or below this, verify every read (or its cached copy's stat)
STALE_STAGING_S = 600.0
BATCH = 1024 * 1024  # bytes handed to the writer thread at a time


class IntegrityError(RonError):
    """Stored bytes do not match their address: never serve them."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class ObjectStore:
    """Bundles under ``data_dir``; safe to use from several processes at once."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.objects = data_dir / "objects"
        self.tmp = data_dir / "tmp"
        self.quarantine_dir = data_dir / "quarantine"
        self.verified_dir = data_dir / "state" / "verified"

    def ensure_dirs(self) -> None:
        for d in (self.objects, self.tmp, self.quarantine_dir, self.verified_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- paths ----------------------------------------------------------------------

    def bundle_dir(self, addr: Address) -> Path:
        return self.data_dir / bundle_relpath(addr)

    def relpath(self, bundle: Path) -> str:
        return bundle.relative_to(self.data_dir).as_posix()

    # --- writing --------------------------------------------------------------------

    def sweep_staging(self, older_than: float = STALE_STAGING_S) -> int:
        """Remove staging dirs left by crashed writers; returns how many."""
        removed = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > older_than:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed += 1
        return removed

    async def put_stream(
        self,
        chunks: AsyncIterable[bytes],
        *,
        tld: str | None,
        mime: str,
        original_filename: str | None = None,
        license: str | None = None,
        relations: Relations | None = None,
        max_bytes: int | None = None,
        private: bool = False,
    ) -> tuple[Manifest, bool]:
        """Stream ``chunks`` into a new bundle; returns (manifest, created).

        Chunks are batched and handed to a worker thread, where BLAKE3, the encoders and
        the file writes release the GIL: the event loop keeps receiving while the other
        core hashes and writes. The body is never held whole (one batch at most).
        """
        writer = BundleWriter(
            self.data_dir,
            tld=tld,
            mime=mime,
            original_filename=original_filename or "",
            license=license,
            relations=relations,
            private=private,
        )
        with writer:
            pending: list[bytes] = []
            pending_len = 0
            size = 0
            # One batch is written (in a thread) while the next is received: at most
            # two batches of the body are in memory at any time.
            writing: asyncio.Future[None] | None = None

            def flush(batch: list[bytes]) -> None:
                for piece in batch:
                    writer.write(piece)

            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise RonError(
                            ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the {max_bytes}-byte cap"
                        )
                    pending.append(chunk)
                    pending_len += len(chunk)
                    if pending_len >= BATCH:
                        batch, pending, pending_len = pending, [], 0
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(asyncio.to_thread(flush, batch))
                if writing is not None:
                    await writing
                    writing = None
                if pending:
                    await asyncio.to_thread(flush, pending)
            finally:
                if writing is not None:  # never abort the bundle under a running write
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(writing)
            manifest = await asyncio.to_thread(writer.commit)
            created = writer.published_new
        self.record_verified(manifest.hash_hex, self.bundle_dir(manifest.address) / "payload.bin")
        return manifest, created

    # --- reading --------------------------------------------------------------------

    def read_manifest_at(self, bundle: Path) -> Manifest | None:
        try:
            text = (bundle / "Manifest.toml").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Manifest.parse(text)

    def _verified_path(self, hex_digest: str) -> Path:
        return self.verified_dir / hex_digest[:2] / hex_digest

    def record_verified(self, hex_digest: str, path: Path, name: str = "payload.bin") -> None:
        """Remember that ``path`` as it is now (size, mtime, inode) hashed to the address."""
        try:
            stamp = _stamp(path.stat())
        except OSError:
            return
        record = self._read_verified(hex_digest)
        record[name] = stamp
        target = self._verified_path(hex_digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(record).encode())

    def _read_verified(self, hex_digest: str) -> dict[str, list[int]]:
        try:
            data = json.loads(self._verified_path(hex_digest).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_verified(self, hex_digest: str, st: os.stat_result, name: str = "payload.bin") -> bool:
        return self._read_verified(hex_digest).get(name) == _stamp(st)

    def forget_verified(self, hex_digest: str) -> None:
        with contextlib.suppress(OSError):
            self._verified_path(hex_digest).unlink()

    def verify_file(self, path: Path, expected_hex: str, expected_size: int) -> bool:
        """Hash a whole file (in this thread); True when length and BLAKE3 match."""
        hasher = blake3.blake3()
        size = 0
        with open(path, "rb") as f:
            for piece in _read_chunks(f):
                hasher.update(piece)
                size += len(piece)
        return size == expected_size and hasher.hexdigest() == expected_hex

    def quarantine(self, addr: Address, reason: str) -> Path | None:
        """Move a corrupted bundle aside so it can never be served; returns where."""
        src = self.bundle_dir(addr)
        if not src.exists():
            return None
        dest = self.quarantine_dir / f"{addr.hex}.{addr.tld}.{int(time.time())}"
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
        except OSError:
            return None
        (dest / "QUARANTINED").write_text(reason + "\n")
        self.forget_verified(addr.hex)
        log.error("bundle quarantined", extra={"addr": addr.canonical, "reason": reason})
        return dest

    def scrub_bundle(self, bundle: Path) -> tuple[Manifest, bool] | None:
        """Re-hash one bundle's payload: (manifest, ok). A good one is recorded as
        verified; a bad one is quarantined. None when the dir holds no manifest."""
        manifest = self.read_manifest_at(bundle)
        if manifest is None:
            return None
        payload = bundle / manifest.stored_filename
        if self.verify_file(payload, manifest.hash_hex, manifest.bytes):
            self.record_verified(manifest.hash_hex, payload)
            return manifest, True
        self.quarantine(manifest.address, "scrub: payload hash mismatch")
        return manifest, False

    def iter_bundles(self) -> Iterator[Path]:
        """Every bundle dir under ``objects/`` (``<tld>/<hh>/<hex>.<tld>``)."""
        if not self.objects.exists():
            return
        for tld_dir in sorted(self.objects.iterdir()):
            for shard in sorted(p for p in tld_dir.iterdir() if p.is_dir()):
                yield from sorted(p for p in shard.iterdir() if p.is_dir())


def _read_chunks(f: Any, size: int = READ_CHUNK) -> Iterator[bytes]:
    while piece := f.read(size):
        yield piece


async def iter_file(path: Path, start: int, end: int, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Bytes ``start..end`` (inclusive) of a file in chunks, reads off the event loop
    only when they are large (small reads from the page cache are faster inline)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos <= end:
            n = min(chunk, end - pos + 1)
            data = os.pread(fd, n, pos)
            if not data:
                raise IntegrityError("stored object is shorter than its manifest")
            pos += len(data)
            yield data
    finally:
        os.close(fd)
