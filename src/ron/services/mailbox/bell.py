"""The mailbox's doorbell: what a process that worked on the shared file tells the owner.

Gateway workers serve the mailbox's immediate operations against the shared SQLite
file themselves (:mod:`~ron.services.mailbox.attached`). Three things only the owner
(the mailbox service process) can do must still hear about that work:

- wake long-poll receivers and subscriptions waiting on a topic (a send, a NACK, an
  ACK that made room);
- schedule its timer for leases and delays taken elsewhere, so that their expiry
  wakes those waiters too;
- count the work in the node's ``mailbox_*`` metrics, which live in its process.

Each operation's news leaves as one datagram on a Unix socket (``mailbox.bell`` in the
node's run dir, mode 0700): no reply, no connection, about as costly as one
``sendto``. News is coalesced per topic. When the owner's queue is full, the news is
kept and sent again shortly; when the owner is not there (restarting), it is dropped,
because a restarted owner has no waiters yet and rebuilds its timer from the file.

The owner reads the datagrams on its event loop, and again synchronously before each
metrics scrape, so a scrape taken after a reply to any operation counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger("ron.mailbox")

BELL_NAME = "mailbox.bell"
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
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, label)
    everything: bool = False

    def empty(self) -> bool:
        return not (self.notify or self.due or self.counts or self.everything)

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [
                self.everything,
                [list(k) for k in self.notify],
                list(self.due.items()),
                [[n, label, c] for (n, label), c in self.counts.items()],
            ]
        )
        return data

    @staticmethod
    def decode(data: bytes) -> Rung:
        """Strict: a datagram of any other shape raises ValueError."""
        try:
            every, notify, due, counts = msgpack.unpackb(data, strict_map_key=True)
            rung = Rung(everything=bool(every))
            for kind, topic in notify:
                rung.notify.add((_text(kind), _text(topic)))
            for topic, at in due:
                rung.due[_text(topic)] = _int(at)
            for name, label, n in counts:
                rung.counts[(_text(name), _text(label))] += _int(n)
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


class BellSender:
    """Collects an operation's news and rings the owner with it (:meth:`ring`)."""

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._pending = Rung()
        self._retry: asyncio.TimerHandle | None = None
        self.dropped = 0

    def notify(self, kind: str, topic: str) -> None:
        self._pending.notify.add((kind, topic))
        self._bound()

    def due(self, topic: str, at_ms: int) -> None:
        current = self._pending.due.get(topic)
        if current is None or at_ms < current:
            self._pending.due[topic] = at_ms
            self._bound()

    def count(self, name: str, amount: float = 1, label: str = "") -> None:
        self._pending.counts[(name, label)] += int(amount)

    def _bound(self) -> None:
        p = self._pending
        if len(p.notify) + len(p.due) > MAX_TOPICS:
            p.notify.clear()
            p.due.clear()
            p.everything = True

    def ring(self) -> None:
        """Send what is pending now; kept for a retry while the owner's queue is full."""
        if self._pending.empty() or self._retry is not None:
            return
        try:
            self._sock.sendto(self._pending.encode(), self._path)
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


class BellReceiver:
    """The owner's end: bound in the run dir, read on the loop and before scrapes."""

    def __init__(self, path: Path, apply: Callable[[Rung], None]) -> None:
        self._path = path
        self._apply = apply
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
