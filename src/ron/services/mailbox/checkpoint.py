"""Checkpoints of a shared mailbox file, on a thread of the owner, off the request path.

SQLite in WAL mode appends every commit to the WAL and copies it back into the database
file at a checkpoint. By default the connection whose commit crosses the threshold runs
the checkpoint inside that commit. With ``synchronous=normal`` that checkpoint is also
where the WAL is first flushed to disk: 32 MiB of WAL written since the last one, about
90 ms on this class of disk, with the event loop of whichever front end made the commit
stopped meanwhile (measured in the store alone: 220 of a batch cycle's 440 µs of
commits were checkpoints).

Here the owner's thread checkpoints every :data:`EVERY_S` on its own connection, in
two passes:

1. ``PASSIVE``, taking no lock: flushes the WAL, copies its pages into the file and
   flushes that, while writers go on appending (the slow part, done beside them);
2. a second ``PASSIVE`` pass under the writers' lock
   (:mod:`~ron.services.mailbox.store`, ``<db>.wlock``) copies just those frames, so
   the checkpoint is complete and the next writer starts the WAL over from its
   beginning. Without it, a file that is written continuously would grow its WAL
   without end. Writers wait for that short pass only.

The writers keep SQLite's own checkpoint as a backstop at a larger size, for when the
owner is down. Durability is unchanged: a commit is in the WAL before it is answered,
and ``synchronous=normal`` flushes the WAL at every checkpoint, so at most about
:data:`EVERY_S` of commits are at risk on power loss (never on a process crash).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("ron.mailbox")

EVERY_S = 0.5
# Unlocked passes to catch up before the locked one, while writers appended at least
# this many frames (4 MiB) during the previous pass.
CATCH_UP_PASSES = 3
CATCH_UP_FRAMES = 1024


class Checkpointer:
    """A thread checkpointing ``path`` every ``every_s`` until :meth:`close`."""

    def __init__(
        self, path: Path, write_lock: Path, *, synchronous: str, every_s: float = EVERY_S
    ) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._lock = os.open(write_lock, os.O_RDWR | os.O_CREAT, 0o600)
        self._every = every_s
        self._stop = threading.Event()
        self.passes = 0  # checkpoints that found frames to copy
        self.locked_passes = 0  # of which finished under the writers' lock
        self._settled = -1  # the WAL's frames when a pass last left it all copied
        self._thread = threading.Thread(target=self._run, name="mailbox-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.checkpoint()
            except sqlite3.Error:
                log.exception("mailbox checkpoint failed")

    def checkpoint(self) -> None:
        """One checkpoint, as described above (also callable directly)."""
        _, frames, copied = self._passive()
        if frames <= 0 or frames == copied == self._settled:
            return  # started over, or nothing written since the last complete pass
        self.passes += 1
        # ``frames`` is the WAL as the pass found it; writers may have appended since.
        # Catch up beside them while they append a lot, then finish under their lock
        # (with nothing new, that pass copies nothing and flushes nothing).
        for _ in range(CATCH_UP_PASSES):
            _, again, _ = self._passive()
            if again - frames < CATCH_UP_FRAMES:
                break
            frames = again
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            _, frames, copied = self._passive()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        self.locked_passes += 1
        self._settled = frames if copied >= frames else -1

    def _passive(self) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames copied) of one ``PASSIVE`` checkpoint."""
        busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(frames), int(copied)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()
        os.close(self._lock)
