"""Crash-safe file system primitives: atomic writes and directory fsyncs.

The node is crash-only (ARCHITECTURE "Crash-only"): a ``kill -9`` or a power cut at any
moment must leave either the old state or the new one, never a torn file. On POSIX that
takes three steps, each of which is easy to forget:

1. write the new bytes to a temporary name *in the same directory* (``rename`` is atomic
   only within one file system);
2. ``fsync`` the file, so its data is on disk before its name is;
3. ``rename`` it over the final name and ``fsync`` the directory, so the new name itself
   survives a crash.

Storage, the index and the bundle builder all go through these helpers so the sequence is
written down once. :func:`exclusive` is the one way processes take turns on a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "exclusive",
    "fsync_dir",
    "fsync_file",
    "make_dirs",
    "temp_name",
]


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames, unlinks) to stable storage.

    Without this a renamed-in file can vanish after a crash even though its own data was
    fsynced: the rename lives in the directory, not in the file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file that was written and closed elsewhere to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(final: Path) -> Path:
    """A unique hidden sibling of ``final`` to stage its new content under.

    A sibling, because ``rename`` is only atomic within one file system; hidden and
    suffixed ``.tmp`` so a listing or a janitor can tell it is not a finished file.
    """
    return final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")


def atomic_write_bytes(
    path: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o666
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file whole.

    The temporary file is created with ``mode`` (default ``0o666``) minus the process
    umask (unlike :func:`tempfile.mkstemp`, whose ``0o600`` would make published files
    unreadable to a gateway running as another user). Secrets pass ``mode=0o600``: the
    mode is applied at creation, so the bytes are never readable by others, not even
    for an instant. On any failure the temporary file is removed and the exception
    propagates; the old file is untouched.
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8", *, mode: int = 0o666) -> None:
    """:func:`atomic_write_bytes` for text (UTF-8 unless told otherwise)."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that also makes every directory it creates durable.

    Each newly created directory's parent is fsynced, so after a crash the chain of
    directories leading to a renamed-in file is still there. Directories that already
    existed are left alone (and cost no fsync).
    """
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            # A concurrent writer made it first; fsync anyway, since we cannot know
            # whether they have yet.
            if not directory.is_dir():
                raise
        fsync_dir(directory.parent)


@contextlib.contextmanager
def exclusive(lock: Path, *, mode: int = 0o600) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock`` (created with ``mode``) for the block, across
    processes; a holder's death releases it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
