"""Where the node's secrets live on disk, and the three rules for touching them.

1. Secret files are written atomically (``ron.fsutil``) with mode ``0600`` applied at
   creation, inside a ``0700`` directory: a crash leaves the old or the new file, and no
   other user can read either, not even for an instant.
2. A secret file readable or writable by group or others is refused on load, the way
   ``ssh`` refuses a private key with loose permissions: if someone else could have read
   it, it is no longer a secret, and silently using it would hide that.
3. Read-modify-write of a shared file (keyring, revocation list, audit log) happens under
   an exclusive ``flock`` on a sibling lock file, because the CLI and the node's
   processes may change the same file at the same time.

Readers never lock: files are replaced atomically, so a reader sees a whole old or a
whole new file, and :func:`stat_signature` tells it cheaply when to re-read.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ron.fsutil import atomic_write_bytes, exclusive, make_dirs
from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "AuthPaths",
    "StatSignature",
    "ensure_private_dir",
    "locked",
    "read_secret",
    "stat_signature",
    "write_secret",
]

SECRET_MODE = 0o600
DIR_MODE = 0o700
MAX_SECRET_FILE = 4 * 1024 * 1024

StatSignature = tuple[int, int, int, int]


@dataclass(frozen=True)
class AuthPaths:
    """The files of a node's capability state, all under its data dir."""

    data_dir: Path

    @property
    def auth_dir(self) -> Path:
        return self.data_dir / "auth"

    @property
    def node_key(self) -> Path:
        return self.auth_dir / "node.key"

    @property
    def keyring(self) -> Path:
        return self.auth_dir / "keyring.json"

    @property
    def revocations(self) -> Path:
        return self.auth_dir / "revocations.json"

    @property
    def owner_token(self) -> Path:
        """The token ``ron up`` mints for the node's owner; the CLI and SDK find it here."""
        return self.auth_dir / "owner.token"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / "audit.jsonl"


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (durably) and make sure only its owner can enter it."""
    make_dirs(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, DIR_MODE)


def write_secret(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the first byte."""
    ensure_private_dir(path.parent)
    atomic_write_bytes(path, data, mode=SECRET_MODE)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others may read or write.

    Raises ``FileNotFoundError`` when it does not exist (callers decide whether that
    means "create one"), and ``RonError(INTERNAL)`` for loose permissions, a non-regular
    file, or an absurd size.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RonError(ErrorCode.INTERNAL, f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise RonError(
                ErrorCode.INTERNAL,
                f"refusing {path}: it is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` if it is "
                "still secret, or replace it",
            )
        if st.st_size > MAX_SECRET_FILE:
            raise RonError(ErrorCode.INTERNAL, f"{path} is too large to be a key file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)


def stat_signature(path: Path) -> StatSignature | None:
    """What changes whenever ``path`` is replaced or edited; None when it is absent.

    Atomic replacement always yields a new inode, so (device, inode, mtime, size) moves
    even when two writes land within one mtime tick.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for read-modify-write of ``path`` (across processes)."""
    ensure_private_dir(path.parent)
    with exclusive(path.with_name(f".{path.name}.lock"), mode=SECRET_MODE):
        yield
