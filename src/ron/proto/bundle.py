"""Bundles: the on-disk unit of published content, and the builder that makes them.

Layout (REFERENCE §2, normative text in docs/specs/BUNDLES.md)::

    <data_dir>/objects/<tld>/<hex[0:2]>/<hex>.<tld>/
        payload.bin        the original bytes
        Manifest.toml      schema v2 (ron.proto.manifest)
        payload.bin.zst    text-like MIME types only: zstd level 15
        payload.bin.br     text-like MIME types only: brotli quality 9, lgwin 22

Content without a tld is filed under :data:`DEFAULT_TLD` (``bin``), so every bundle has
exactly one path and the layout never needs a "no kind" special case.

Building is crash-only: everything is written and fsynced under ``<data_dir>/tmp/`` and
then the finished directory is renamed into place with one ``rename(2)``. A reader sees
either no bundle or a complete one, never a half-written one; a crash leaves only junk in
``tmp/``, which no reader looks at. Because the path is derived from the content's hash,
publishing the same bytes twice is idempotent: the second build finds the first one in
place and keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Final

from ron.fsutil import fsync_dir, make_dirs
from ron.proto.address import Address, BytesLike, Hasher, normalize_tld
from ron.proto.codings import (
    BROTLI_LGWIN,
    BROTLI_QUALITY,
    ZSTD_LEVEL,
    BrotliEncoder,
    Encoder,
    ZstdEncoder,
    brotli_encode,
    brotli_encode_stream,
    zstd_encode,
    zstd_encode_stream,
)
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import (
    MANIFEST_NAME,
    Encoding,
    Manifest,
    Payment,
    Relations,
    format_utc,
)

__all__ = [
    "BROTLI_LGWIN",
    "BROTLI_NAME",
    "BROTLI_QUALITY",
    "CHUNK_SIZE",
    "DEFAULT_TLD",
    "MANIFEST_NAME",
    "OBJECTS_DIR",
    "PAYLOAD_NAME",
    "STAGING_DIR",
    "ZSTD_LEVEL",
    "ZSTD_NAME",
    "BundleWriter",
    "brotli_encode",
    "brotli_encode_stream",
    "bundle_dir",
    "bundle_relpath",
    "is_text_like",
    "write_bundle_offline",
    "zstd_encode",
    "zstd_encode_stream",
]

DEFAULT_TLD: Final = "bin"
"""The tld a bundle is filed under when its address carries none."""
OBJECTS_DIR: Final = "objects"
STAGING_DIR: Final = "tmp"
"""Under the data dir; holds bundles being built. Never served, safe to empty at startup."""
PAYLOAD_NAME: Final = "payload.bin"
ZSTD_NAME: Final = "payload.bin.zst"
BROTLI_NAME: Final = "payload.bin.br"
CHUNK_SIZE: Final = 64 * 1024
"""Read and write granularity for payloads (the storage streaming chunk, REFERENCE §5)."""

_TEXT_LIKE_TYPES: Final = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/xml",
        "image/svg+xml",
    }
)
_EXISTS_ERRNOS: Final = frozenset({errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR})


def bundle_relpath(addr: Address) -> PurePosixPath:
    """``objects/<tld>/<hex[0:2]>/<hex>.<tld>`` relative to the data dir.

    The two-hex-digit fan-out keeps any one directory at about 1/256 of a kind's bundles.
    """
    tld = addr.tld or DEFAULT_TLD
    return PurePosixPath(OBJECTS_DIR, tld, addr.hex[:2], f"{addr.hex}.{tld}")


def bundle_dir(data_dir: Path, addr: Address) -> Path:
    """The absolute bundle directory for ``addr`` under ``data_dir``."""
    return data_dir.joinpath(*bundle_relpath(addr).parts)


def is_text_like(mime: str) -> bool:
    """Whether a MIME type gets precompressed ``.zst``/``.br`` variants.

    Text-like means: ``text/*``; JSON, JavaScript and XML (``application/json``,
    ``application/javascript``, ``application/ecmascript``, ``application/x-javascript``,
    ``application/xml``); SVG; and any ``+json`` or ``+xml`` structured-syntax suffix
    (``application/ld+json``, ``application/atom+xml``...). Parameters such as
    ``; charset=utf-8`` and letter case are ignored. Everything else -- images, video,
    archives -- is already compressed, and recompressing it wastes CPU for no gain.
    """
    if not isinstance(mime, str):
        return False
    base = mime.split(";", 1)[0].strip().lower()
    kind, slash, subtype = base.partition("/")
    if not slash or not kind or not subtype:
        return False
    return kind == "text" or base in _TEXT_LIKE_TYPES or subtype.endswith(("+json", "+xml"))


class _Sink:
    """One staged file: bytes go to disk and through a hasher, and get counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = Hasher()
        # "x": the staging directory is ours alone; an existing file would be a bug.
        self._file = open(path, "xb")  # noqa: SIM115 - closed in close()

    def write(self, data: BytesLike) -> None:
        if data:
            self._file.write(data)
            self.hasher.update(data)

    def close(self, *, sync: bool) -> None:
        if self._file.closed:
            return
        try:
            if sync:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()


PRIVATE_MARKER = "PRIVATE"
"""An empty file in a bundle: its content is served only to capability holders
(docs/specs/BUNDLES.md). Set by the PUT that created the bundle; never changed later."""


class BundleWriter:
    """Build one bundle from a stream of chunks, then publish it atomically.

    Use as a context manager: leaving the block with an exception (or without
    :meth:`commit`) removes the staging directory.

    ::

        with BundleWriter(data_dir, tld="text", mime="text/plain",
                          original_filename="a.txt") as writer:
            for chunk in chunks:
                writer.write(chunk)
            manifest = writer.commit()

    The payload is hashed and, for text-like MIME types, compressed in the same pass, so
    the source is read exactly once and never held whole. All metadata is validated
    before the first byte is written, so a bad ``mime`` fails fast, not after a 4 GiB
    upload.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        mime: str,
        original_filename: str,
        tld: str | None = None,
        license: str | None = None,
        relations: Relations | None = None,
        payment: Payment | None = None,
        ext: Mapping[str, Mapping[str, str]] | None = None,
        private: bool = False,
    ) -> None:
        self._private = private
        self._data_dir = Path(data_dir)
        self._tld = DEFAULT_TLD if tld is None else normalize_tld(tld)
        self._mime = mime
        self._original_filename = original_filename
        self._license = license
        self._relations = relations
        self._payment = payment
        self._ext = dict(ext or {})
        # Validate every field now, with a placeholder digest, rather than after the upload.
        self._manifest_for("0" * 64, 0, "1970-01-01T00:00:00Z", ())

        staging_root = self._data_dir / STAGING_DIR
        make_dirs(staging_root)
        self._staging = staging_root / f"bundle-{secrets.token_hex(8)}"
        self._staging.mkdir()  # mode 0o777 & ~umask, like any directory the user makes
        self._done = False
        self.published_new = False
        """True after :meth:`commit` when this writer's bundle was renamed into place."""
        self._sinks: list[_Sink] = []
        try:
            self._payload = self._sink(PAYLOAD_NAME)
            self._encoders: list[tuple[Encoder, _Sink]] = []
            if is_text_like(mime):
                self._encoders = [
                    (ZstdEncoder(), self._sink(ZSTD_NAME)),
                    (BrotliEncoder(), self._sink(BROTLI_NAME)),
                ]
        except BaseException:
            self.abort()
            raise

    def _sink(self, name: str) -> _Sink:
        sink = _Sink(self._staging / name)
        self._sinks.append(sink)
        return sink

    def _manifest_for(
        self, hash_hex: str, size: int, created_utc: str, encodings: tuple[Encoding, ...]
    ) -> Manifest:
        return Manifest(
            tld=self._tld,
            hash_hex=hash_hex,
            bytes=size,
            created_utc=created_utc,
            mime=self._mime,
            original_filename=self._original_filename,
            license=self._license,
            encodings=encodings,
            payment=self._payment,
            relations=self._relations,
            ext=self._ext,
        )

    @property
    def staging_path(self) -> Path:
        """Where the bundle is being built (for diagnostics and tests)."""
        return self._staging

    @property
    def nbytes(self) -> int:
        """Payload bytes written so far (for quota checks during an upload)."""
        return self._payload.hasher.nbytes

    def write(self, chunk: BytesLike) -> None:
        """Append a chunk of the payload."""
        if self._done:
            raise RuntimeError("BundleWriter already committed or aborted")
        self._payload.write(chunk)
        for encoder, sink in self._encoders:
            sink.write(encoder.update(chunk))

    def commit(self, *, now: datetime | None = None, expect: Address | None = None) -> Manifest:
        """Finish every file, write Manifest.toml, fsync, and rename the bundle into place.

        ``expect`` is the address the uploader claimed; a mismatch aborts the bundle and
        raises ``RonError(BAD_REQUEST)``. ``now`` (timezone-aware) stamps ``created_utc``
        at second precision; it defaults to the current time.

        If a bundle for the same content already exists and its manifest agrees on the
        digest, the existing bundle is kept and *its* manifest returned (the first
        publisher's metadata wins: the path names the bytes, not the metadata). An
        existing directory whose manifest is unreadable or disagrees is replaced.
        """
        if self._done:
            raise RuntimeError("BundleWriter already committed or aborted")
        try:
            manifest = self._finish_files(now, expect)
            published = self._publish(manifest)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return published

    def _finish_files(self, now: datetime | None, expect: Address | None) -> Manifest:
        for encoder, sink in self._encoders:
            sink.write(encoder.finish())
        for sink in self._sinks:
            sink.close(sync=True)
        hash_hex = self._payload.hasher.hexdigest()
        if expect is not None and expect.hex != hash_hex:
            raise RonError(
                ErrorCode.BAD_REQUEST,
                f"content does not match its address: expected {expect.canonical}, "
                f"got b3:{hash_hex}",
            )
        encodings = tuple(
            Encoding(
                coding=encoder.coding,
                level=encoder.level,
                bytes=sink.hasher.nbytes,
                filename=sink.path.name,
                hash_hex=sink.hasher.hexdigest(),
            )
            for encoder, sink in self._encoders
        )
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        manifest = self._manifest_for(
            hash_hex, self._payload.hasher.nbytes, format_utc(moment), encodings
        )
        manifest_sink = _Sink(self._staging / MANIFEST_NAME)
        try:
            manifest_sink.write(manifest.render().encode("utf-8"))
        finally:
            manifest_sink.close(sync=True)
        if self._private:
            # In the staging directory, so the bundle is never visible without it.
            _Sink(self._staging / PRIVATE_MARKER).close(sync=True)
        fsync_dir(self._staging)
        return manifest

    def _publish(self, manifest: Manifest) -> Manifest:
        final = bundle_dir(self._data_dir, manifest.address)
        make_dirs(final.parent)
        for _ in range(3):
            try:
                # rename(2) refuses a non-empty target directory, so a concurrent
                # publisher of the same content makes this fail rather than clobber.
                os.rename(self._staging, final)
            except OSError as exc:
                if exc.errno not in _EXISTS_ERRNOS:
                    raise
            else:
                fsync_dir(final.parent)
                fsync_dir(self._staging.parent)
                self.published_new = True
                return manifest
            existing = _existing_manifest(final, manifest.hash_hex)
            if existing is not None:
                self.abort()
                return existing
            self._move_aside(final)
        raise RonError(ErrorCode.INTERNAL, f"could not publish bundle {manifest.address}")

    def _move_aside(self, broken: Path) -> None:
        """Take a damaged bundle out of the way (into tmp/, then delete it)."""
        trash = self._staging.parent / f"trash-{secrets.token_hex(8)}"
        try:
            os.rename(broken, trash)
        except FileNotFoundError:
            return  # someone else moved it already
        fsync_dir(broken.parent)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                trash.unlink()

    def abort(self) -> None:
        """Discard everything staged. Safe to call more than once."""
        self._done = True
        for sink in self._sinks:
            with contextlib.suppress(OSError):
                sink.close(sync=False)
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


def _existing_manifest(final: Path, hash_hex: str) -> Manifest | None:
    """The manifest of an already published bundle, if it is intact enough to keep.

    Intact enough means: Manifest.toml parses, names the same digest, and the payload
    file has the size it records. The payload is not re-hashed here (that would cost a
    full read per duplicate publish); readers verify bytes before serving anyway.
    """
    try:
        existing = Manifest.parse((final / MANIFEST_NAME).read_bytes())
        size = (final / existing.stored_filename).stat().st_size
    except (OSError, RonError):
        return None
    if existing.hash_hex != hash_hex or size != existing.bytes:
        return None
    return existing


def write_bundle_offline(
    data_dir: Path,
    source: BinaryIO | Path,
    *,
    tld: str | None = None,
    mime: str,
    original_filename: str,
    license: str | None = None,
    relations: Relations | None = None,
    payment: Payment | None = None,
    ext: Mapping[str, Mapping[str, str]] | None = None,
    now: datetime | None = None,
) -> Manifest:
    """Publish ``source`` as a bundle under ``data_dir`` without a running node (``ron pack``).

    ``source`` is a binary stream or a path; it is read in 64 KiB chunks. ``tld`` defaults
    to ``bin``. Returns the manifest of the bundle now on disk (see
    :meth:`BundleWriter.commit` for the already-exists case). Bad metadata raises
    ``RonError(BAD_REQUEST)`` before anything is written; I/O failures raise ``OSError``
    and leave nothing behind but staging debris in ``tmp/``, if even that.
    """
    with BundleWriter(
        data_dir,
        tld=tld,
        mime=mime,
        original_filename=original_filename,
        license=license,
        relations=relations,
        payment=payment,
        ext=ext,
    ) as writer:
        if isinstance(source, Path):
            with source.open("rb") as stream:
                _copy(stream, writer)
        else:
            _copy(source, writer)
        return writer.commit(now=now)


def _copy(stream: BinaryIO, writer: BundleWriter) -> None:
    while chunk := stream.read(CHUNK_SIZE):
        writer.write(chunk)
