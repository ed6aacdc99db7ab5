"""Downloads that appear whole or not at all.

A download is written to a hidden temporary sibling of its destination and renamed over
it only after the bytes verified; on any failure the temporary file is removed. A reader
of the destination therefore never sees a partial or unverified file, and a failed
download leaves nothing behind (not even an old file half-overwritten).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from ron.fsutil import fsync_dir, temp_name

__all__ = ["AtomicFile"]


class AtomicFile:
    """A file being written at a temporary name until :meth:`commit`."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "write after commit or abort"
        self._file.write(chunk)

    def commit(self) -> None:
        """Flush to disk, rename into place, flush the directory entry."""
        assert self._file is not None, "commit after commit or abort"
        f, self._file = self._file, None
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written; idempotent."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
