"""The mailbox's bell: how a process working on the shared file wakes the owner's waiters.

Gateway workers serve the mailbox's immediate operations against the shared SQLite
file themselves (:mod:`~ron.services.mailbox.attached`). Long-poll receivers and
subscriptions wait only in the owner (the mailbox service process), so when a worker
commits something they may be waiting for (a send, a NACK, an ACK that made room, a
lease whose expiry they must see), the owner must hear of it.

Most of the time nobody waits: a busy consumer finds messages on its first attempt. So
the owner keeps a count of its waiters in a small shared file (``mailbox.waiting``,
memory-mapped by every process) and a worker rings only while it is not zero. The
order makes that safe: the owner raises the count *before* its first attempt to lease,
and a worker reads it *after* its commit, so either the owner's attempt sees the commit
or the worker sees the waiter. A waiter that starts later also asks the file when the
topic's next lease ends, since leases taken while nobody waited were not rung.

News leaves as one datagram per operation on a Unix socket (``mailbox.bell``, in the
node's run dir, mode 0700): no reply, no connection, one ``sendto``. It is coalesced
per topic. When the owner's queue is full, the news is kept and sent again shortly;
when the owner is not there (restarting), it is dropped: a restarted owner has no
waiters yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger("ron.mailbox")

BELL_NAME = "mailbox.bell"
WAITING_NAME = "mailbox.waiting"
_COUNT = 8  # bytes of the waiter count (little-endian)
_NONE = bytes(_COUNT)
# Past this many distinct topics in one datagram the news is "look at everything":
# the owner wakes every waiter and rescans its timer (rare; keeps datagrams small).
MAX_TOPICS = 1024
MAX_DATAGRAM = 256 * 1024
RETRY_S = 0.005


@dataclass
class Rung:
    """One datagram's news (also the sender's pending buffer)."""

    notify: set[tuple[str, str]] = field(default_factory=set)  # (signal kind, topic)
    due: dict[str, int] = field(default_factory=dict)  # topic -> earliest wall ms
    everything: bool = False

    def empty(self) -> bool:
        return not (self.notify or self.due or self.everything)

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.everything, [list(k) for k in self.notify], list(self.due.items())]
        )
        return data

    @staticmethod
    def decode(data: bytes) -> Rung:
        """Strict: a datagram of any other shape raises ValueError."""
        try:
            every, notify, due = msgpack.unpackb(data, strict_map_key=True)
            rung = Rung(everything=bool(every))
            for kind, topic in notify:
                rung.notify.add((_text(kind), _text(topic)))
            for topic, at in due:
                rung.due[_text(topic)] = _int(at)
        except (TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ValueError(f"bad bell datagram: {type(exc).__name__}") from None
        return rung


def _text(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 256:
        raise ValueError("text expected")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("integer expected")
    return v


class WaitingCount:
    """The owner's number of waiters, in a memory-mapped file every process can read.

    The owner creates it and is its only writer; the file keeps its inode across owner
    restarts (it is reset, never replaced), so a reader's mapping stays the live one.
    """

    def __init__(self, path: Path, *, owner: bool) -> None:
        self._path = path
        self._map: mmap.mmap | None = None
        self._count = 0
        if owner:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, _COUNT)
                self._map = mmap.mmap(fd, _COUNT)
            finally:
                os.close(fd)
            self._write()

    def _write(self) -> None:
        assert self._map is not None
        self._map[:_COUNT] = self._count.to_bytes(_COUNT, "little")

    def up(self) -> None:
        self._count += 1
        self._write()

    def down(self) -> None:
        self._count -= 1
        self._write()

    def any(self) -> bool:
        """Whether the owner has waiters; True while that cannot be known (no file yet:
        the ring then goes nowhere or finds an owner that has just started)."""
        if self._map is None:
            try:
                fd = os.open(self._path, os.O_RDONLY)
            except FileNotFoundError:
                return True
            try:
                if os.fstat(fd).st_size < _COUNT:
                    return True
                self._map = mmap.mmap(fd, _COUNT, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        return self._map[:_COUNT] != _NONE

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class BellSender:
    """Collects an operation's news and rings the owner with it (:meth:`ring`)."""

    def __init__(self, run_dir: Path) -> None:
        self._path = str(run_dir / BELL_NAME)
        self._waiting = WaitingCount(run_dir / WAITING_NAME, owner=False)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._pending = Rung()
        self._retry: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.rung = 0

    def notify(self, kind: str, topic: str) -> None:
        self._pending.notify.add((kind, topic))
        self._bound()

    def due(self, topic: str, at_ms: int) -> None:
        current = self._pending.due.get(topic)
        if current is None or at_ms < current:
            self._pending.due[topic] = at_ms
            self._bound()

    def _bound(self) -> None:
        p = self._pending
        if len(p.notify) + len(p.due) > MAX_TOPICS:
            p.notify.clear()
            p.due.clear()
            p.everything = True

    def ring(self) -> None:
        """Send what is pending now, if anyone waits (call after the commit); kept for
        a retry while the owner's queue is full."""
        if self._pending.empty() or self._retry is not None:
            return
        if not self._waiting.any():
            self._pending = Rung()  # nobody to wake; a later waiter asks the file
            return
        try:
            self._sock.sendto(self._pending.encode(), self._path)
            self.rung += 1
        except BlockingIOError:
            self._retry = asyncio.get_running_loop().call_later(RETRY_S, self._again)
            return
        except OSError as exc:  # no owner listening (restarting or stopped)
            self.dropped += 1
            if self.dropped == 1:
                log.info("mailbox bell not delivered: %s", type(exc).__name__)
        self._pending = Rung()

    def _again(self) -> None:
        self._retry = None
        self.ring()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._sock.close()
        self._waiting.close()


class BellReceiver:
    """The owner's end: bound in the run dir, read on its loop; holds the waiter count."""

    def __init__(
        self,
        run_dir: Path,
        apply: Callable[[Rung], None],
        on_bad: Callable[[], None] = lambda: None,
    ) -> None:
        path = self._path = run_dir / BELL_NAME
        self._apply = apply
        self._on_bad = on_bad
        self.waiting = WaitingCount(run_dir / WAITING_NAME, owner=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous owner's, dead
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bad = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self.drain)

    def drain(self) -> None:
        """Apply every datagram queued now."""
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, OSError):
                return
            try:
                rung = Rung.decode(data)
            except ValueError:
                self.bad += 1
                self._on_bad()
                continue
            try:
                self._apply(rung)
            except Exception:
                log.exception("applying mailbox bell news failed")

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self.waiting.close()
