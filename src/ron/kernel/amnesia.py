"""Amnesia mode: a node that leaves nothing behind on disk.

Everything a node would write -- content, index, mailbox, keys, tokens, the audit log,
sockets, temp files -- goes to one private directory the node makes on a RAM-backed
filesystem (``/dev/shm``, a tmpfs), so the services run unchanged: same files, same
crash safety, no disk. On exit the kernel overwrites every file with zeros before it
removes the tree, so secrets do not linger in freed pages of the tmpfs either.

A kernel killed with SIGKILL cannot wipe; the next amnesia node sweeps directories whose
owning kernel is gone, so the window is "until the next start or a reboot" and never
"on disk".
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["RAM_ROOT", "make_ram_dir", "sweep_orphans", "wipe"]

RAM_ROOT = Path("/dev/shm")
_PREFIX = "ron-amnesia-"
_NAME = re.compile(rf"{_PREFIX}(\d+)-\w+")


def make_ram_dir(root: Path = RAM_ROOT) -> Path:
    """A fresh 0700 directory on the RAM filesystem, named after this kernel's pid."""
    if not root.is_dir() or not os.access(root, os.W_OK):
        raise RuntimeError(
            f"amnesia mode needs a writable RAM filesystem at {root} (tmpfs); none found"
        )
    sweep_orphans(root)
    return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))


def sweep_orphans(root: Path = RAM_ROOT) -> int:
    """Wipe amnesia directories left by kernels that no longer run; returns how many."""
    swept = 0
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            m = _NAME.fullmatch(entry.name)
            if m is None or entry.is_symlink() or entry.stat().st_uid != os.getuid():
                continue
            if not _alive(int(m.group(1))):
                wipe(entry)
                swept += 1
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wipe(path: Path) -> None:
    """Overwrite every regular file under ``path`` with zeros, then remove the tree."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            _zero(Path(dirpath) / name)
    shutil.rmtree(path, ignore_errors=True)


def _zero(file: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(file, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            block = bytes(min(st.st_size, 1 << 20))
            left = st.st_size
            while left > 0:
                left -= os.write(fd, block[: min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)
