"""The mailbox's durable state: one SQLite file (WAL), one owner, writers in turn.

The mailbox service process owns the file (an exclusive ``flock`` on ``<db>.lock``
makes a second node's mailbox on the same file fail fast). Every operation is one
transaction committed before the caller is answered. With WAL, a commit has reached
the OS once ``COMMIT`` returns, so the death of any process, the writer's own SIGKILL
included, loses nothing that was acknowledged.

``shared``: other processes of the node (the gateway workers, see
:mod:`~ron.services.mailbox.attached`) may open the same file and write to it too.
Writers then take turns on a second ``flock`` (``<db>.wlock``) around each write
transaction: the kernel wakes the next writer the moment the lock is free, where
SQLite's own busy handler would sleep whole milliseconds between retries. Without
``shared`` the owner keeps the file in exclusive locking mode (the WAL index in heap
memory, no file locks per transaction), for nodes that route every operation to it.

``synchronous``: ``normal`` (default) does not fsync on every commit, only at
checkpoints; a power loss or kernel crash can drop the last commits, never corrupt the
file. That is the same promise Redis makes with ``appendfsync everysec``, and it
costs no fsync per message. ``full`` fsyncs the WAL on every commit for operators who
need acknowledged messages to survive power loss too, at one fsync per operation.

Layout. ``messages`` holds the small, mutable part of each message (its state, lease
and delivery count); ``bodies`` holds the immutable headers and payload, so leasing a
1 MiB message rewrites a 60-byte row, not the payload. One index,
``(topic, state, visible_ms)`` (plus the implicit ``seq``), serves every hot query:

* ready messages are ``(topic, READY, 0, seq)``: the head of the queue in FIFO order;
* leased and delayed ones are ``(topic, LEASED|DELAYED, visible_ms)``: the range whose
  time has come is exactly what lease expiry must release;
* dead letters are ``(topic, DEAD, 0, seq)``, listed in order.

A receipt stays valid until the message is leased again: an ack that arrives just
after the lease expired, but before anyone else took the message, still removes it
(the work was done). Once another consumer holds it, the old receipt is stale (409).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ron.proto.envelope import ErrorCode, RonError
from ron.services.mailbox.checkpoint import Checkpointer
from ron.services.mailbox.ids import UlidSource
from ron.services.mailbox.model import (
    DeadLetter,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
    TopicStats,
)
from ron.services.mailbox.receipts import Receipt, new_tokens

READY, LEASED, DELAYED, DEAD = 0, 1, 2, 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY,
    msg_id      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    state       INTEGER NOT NULL,
    visible_ms  INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL,
    lease       INTEGER NOT NULL,
    token       TEXT,
    enqueued_ms INTEGER NOT NULL,
    dead_ms     INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_msg_id ON messages(msg_id);
CREATE INDEX IF NOT EXISTS messages_queue ON messages(topic, state, visible_ms);
CREATE TABLE IF NOT EXISTS bodies (
    seq     INTEGER PRIMARY KEY,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_ms);
"""

WAL_CHECKPOINT_PAGES = 8192

_DELIVERY_COLUMNS = (
    "m.seq, m.msg_id, m.deliveries, m.lease, m.enqueued_ms, m.dead_ms, b.headers, b.payload"
)


def wall_ms() -> int:
    """Wall-clock milliseconds: lease deadlines must mean the same after a restart."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Totals:
    """Node-wide counts for metrics (no per-topic labels: topics are unbounded)."""

    ready: int
    in_flight: int
    delayed: int
    dead: int
    oldest_age_s: float


@dataclass(frozen=True)
class Released:
    """What releasing due leases and delays did in one topic."""

    ready: int
    dead: int


class MailboxStore:
    """All mailbox state; synchronous, for one event loop in one process.

    ``path=None`` keeps everything in memory (amnesia mode). ``clock`` returns wall
    milliseconds and is injectable so tests can move time without sleeping.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        synchronous: str = "normal",
        clock: Callable[[], int] = wall_ms,
        shared: bool = False,
        owner: bool = True,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be normal or full")
        self.path = path
        self._clock = clock
        self._lock_fd: int | None = None
        self._write_fd: int | None = None
        if path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_lock = path.with_name(path.name + ".wlock")
            if owner:
                self._lock_fd = _exclusive_lock(path.with_name(path.name + ".lock"))
            elif not shared:
                raise ValueError("only the owner may open the file unshared")
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if shared:
                self._write_fd = os.open(write_lock, os.O_RDWR | os.O_CREAT, 0o600)
                # Only a backstop: writers queue on the write lock, never on SQLite's.
                self._db.execute("PRAGMA busy_timeout=10000")
            else:
                # Exclusive before WAL: with one writer and no readers in other
                # processes, SQLite keeps the WAL index in heap memory and takes no file
                # locks per transaction (a quarter of a small transaction's cost).
                self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA temp_store=MEMORY")
        # Checkpoint every 32 MiB of WAL rather than SQLite's 4 MiB. A checkpoint syncs
        # the database file and blocks the one event loop for milliseconds; a queue
        # rewrites the same few pages over and over, so a longer WAL copies little more
        # per checkpoint and checkpoints an eighth as often (measured: send+receive+ack
        # of 10 messages 1.0-1.1 ms -> 0.66-0.86 ms; 45 syncs in 4.3 s of load before).
        # Commits are durable in the WAL either way; only restart replay grows (32 MiB).
        # A shared file is checkpointed by its owner's thread instead
        # (:mod:`~ron.services.mailbox.checkpoint`); writers keep a backstop, 4x later.
        pages = WAL_CHECKPOINT_PAGES * (4 if self._write_fd is not None else 1)
        self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        self._db.execute("PRAGMA cache_size=-16384")
        self._db.executescript(SCHEMA)
        self._ids = UlidSource()
        # The highest seq ever stored while this store has been open: only ``send``
        # inserts, so a sole writer knows the next seq without asking (and a seq freed
        # by an ack is never handed out again by this store). A shared file's other
        # writers insert too: ``send`` then also reads the file's highest seq.
        self._last_seq = self._max_seq(self._db)
        self._checkpointer: Checkpointer | None = None
        if path is not None and shared and owner:
            self._checkpointer = Checkpointer(path, write_lock, synchronous=synchronous)

    @staticmethod
    def _max_seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT IFNULL(MAX(seq), 0) FROM messages").fetchone()[0])

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._db.close()
        for fd in (self._lock_fd, self._write_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._write_fd = None

    def now_ms(self) -> int:
        return self._clock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; on a shared file, in its turn among the writers.

        The write lock is taken blocking, on the event loop's thread: a turn lasts one
        short transaction (every operation is bounded), and a process holding it is
        never waiting for anything else. A writer's death releases it.
        """
        db = self._db
        fd = self._write_fd
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # ---- send ------------------------------------------------------------------------

    def send(
        self, topic: str, entries: Sequence[Outgoing], *, dedup_window_ms: int
    ) -> list[SendResult]:
        """Store the entries in order, in one transaction; a key seen within the window
        returns the earlier msg_id and stores nothing."""
        now = self._clock()
        out: list[SendResult] = []
        rows: list[tuple[int, str, str, int]] = []
        bodies: list[tuple[int, str, bytes]] = []
        keys: list[tuple[str, str, str, int]] = []
        ids = iter(self._ids.take(len(entries)))
        with self._tx() as db:
            seq = self._last_seq
            if self._write_fd is not None:
                seq = max(seq, self._max_seq(db))
            seen = self._seen_keys(db, topic, entries, now)  # key -> msg_id, kept or new
            for entry in entries:
                key = entry.idempotency_key
                if key is not None:
                    known = seen.get(key)
                    if known is not None:
                        out.append(SendResult(known, duplicate=True))
                        continue
                seq += 1
                msg_id = next(ids)
                rows.append((seq, msg_id, topic, now))
                bodies.append((seq, _dump_headers(entry.headers), entry.payload))
                if key is not None:
                    seen[key] = msg_id  # a repeat later in this batch is its duplicate
                    keys.append((topic, key, msg_id, now + dedup_window_ms))
                out.append(SendResult(msg_id))
            db.executemany(
                "INSERT INTO messages (seq, msg_id, topic, state, visible_ms, deliveries, lease,"
                " token, enqueued_ms) VALUES (?, ?, ?, 0, 0, 0, 0, NULL, ?)",
                rows,
            )
            db.executemany("INSERT INTO bodies (seq, headers, payload) VALUES (?, ?, ?)", bodies)
            if keys:
                db.executemany(
                    "INSERT OR REPLACE INTO dedup (topic, key, msg_id, expires_ms)"
                    " VALUES (?, ?, ?, ?)",
                    keys,
                )
        self._last_seq = seq  # committed
        return out

    @staticmethod
    def _seen_keys(
        db: sqlite3.Connection, topic: str, entries: Sequence[Outgoing], now: int
    ) -> dict[str, str]:
        """The batch's keys already stored within their window, with their msg_ids: one
        statement per batch (SDKs key every message so that a retried batch is safe)."""
        wanted = list({e.idempotency_key for e in entries if e.idempotency_key is not None})
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = db.execute(
            f"SELECT key, msg_id FROM dedup WHERE topic = ? AND key IN ({marks})"
            " AND expires_ms > ?",
            [topic, *wanted, now],
        ).fetchall()
        return {str(k): str(m) for k, m in rows}

    # ---- receive ---------------------------------------------------------------------

    def receive(
        self,
        topic: str,
        limit: int,
        visibility_ms: int,
        max_deliveries: int,
        *,
        release: bool = True,
    ) -> tuple[list[Delivery], Released]:
        """Lease up to ``limit`` messages from the head of the topic, oldest first.

        With ``release``, leases and delays that are due are released first, in the same
        transaction, so a receive does not depend on the timer having run yet (callers
        that know nothing is due skip that statement).
        """
        with self._tx() as db:
            return self._receive_in(db, topic, limit, visibility_ms, max_deliveries, release)

    def ack_and_receive(
        self,
        receipts: Sequence[Receipt],
        topic: str,
        limit: int,
        visibility_ms: int,
        max_deliveries: int,
        *,
        release: bool = True,
    ) -> tuple[Settled, set[str], list[Delivery], Released]:
        """:meth:`ack` then :meth:`receive`, in one transaction: a consumer settles the
        batch it finished and leases the next in one commit. A stale receipt fails the
        whole call (409) before anything is leased, as a separate ack would."""
        with self._tx() as db:
            settled, touched = self._ack_in(db, receipts)
            got, released = self._receive_in(
                db, topic, limit, visibility_ms, max_deliveries, release
            )
        return settled, touched, got, released

    def _receive_in(
        self,
        db: sqlite3.Connection,
        topic: str,
        limit: int,
        visibility_ms: int,
        max_deliveries: int,
        release: bool,
    ) -> tuple[list[Delivery], Released]:
        """:meth:`receive`'s work inside the caller's transaction."""
        now = self._clock()
        released = self._release_due(db, topic, now, max_deliveries) if release else Released(0, 0)
        rows = db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM messages m JOIN bodies b ON b.seq = m.seq"
            " WHERE m.topic = ? AND m.state = 0 AND m.visible_ms = 0"
            " ORDER BY m.seq LIMIT ?",
            (topic, limit),
        ).fetchall()
        if not rows:
            return [], released
        until = now + visibility_ms
        leases = list(zip(rows, new_tokens(len(rows)), strict=True))
        db.executemany(
            "UPDATE messages SET state = 1, visible_ms = ?, deliveries = deliveries + 1,"
            " lease = lease + 1, token = ? WHERE seq = ?",
            [(until, token, row[0]) for row, token in leases],
        )
        return [_delivery(topic, row, token) for row, token in leases], released

    def release_due(self, topic: str, max_deliveries: int) -> Released:
        """Release the topic's expired leases and finished delays (the timer's job)."""
        now = self._clock()
        with self._tx() as db:
            return self._release_due(db, topic, now, max_deliveries)

    def _release_due(
        self, db: sqlite3.Connection, topic: str, now: int, max_deliveries: int
    ) -> Released:
        states = db.execute(
            "UPDATE messages SET"
            " dead_ms = CASE WHEN state = 1 AND deliveries >= ?1 THEN ?2 ELSE NULL END,"
            " state = CASE WHEN state = 1 AND deliveries >= ?1 THEN 3 ELSE 0 END,"
            " visible_ms = 0"
            " WHERE topic = ?3 AND state IN (1, 2) AND visible_ms <= ?2 RETURNING state",
            (max_deliveries, now, topic),
        ).fetchall()
        dead = sum(1 for (s,) in states if s == DEAD)
        return Released(len(states) - dead, dead)

    def work(self, topic: str) -> tuple[bool, bool]:
        """(a ready message waits, a lease or delay is due) on ``topic``: what a receive
        could lease now, and whether it must release first. One statement of two index
        seeks, read only, outside the writers' lock: a message that arrives, or a lease
        that ends, just after is the same as one just after the receive."""
        ready, due = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE topic = ?1 AND state = 0"
            " AND visible_ms = 0), EXISTS (SELECT 1 FROM messages WHERE topic = ?1"
            " AND state IN (1, 2) AND visible_ms <= ?2)",
            (topic, self._clock()),
        ).fetchone()
        return bool(ready), bool(due)

    def next_due_ms(self, topic: str) -> int | None:
        """When the topic's next lease expires or delay ends; None when nothing waits."""
        best: int | None = None
        for state in (LEASED, DELAYED):
            row = self._db.execute(
                "SELECT visible_ms FROM messages WHERE topic = ? AND state = ?"
                " ORDER BY visible_ms LIMIT 1",
                (topic, state),
            ).fetchone()
            if row is not None and (best is None or row[0] < best):
                best = int(row[0])
        return best

    def pending_due(self) -> list[tuple[str, int]]:
        """Every topic with leases or delays, and its earliest due time (for startup)."""
        rows = self._db.execute(
            "SELECT topic, MIN(visible_ms) FROM messages WHERE state IN (1, 2) GROUP BY topic"
        ).fetchall()
        return [(str(t), int(v)) for t, v in rows]

    # ---- settle ----------------------------------------------------------------------

    def ack(self, receipts: Sequence[Receipt]) -> tuple[Settled, set[str]]:
        """Remove the receipts' messages, all or nothing; returns the topics touched.

        Any stale receipt (the message was leased again since) fails the whole call with
        409 ``conflict`` whose ``stale`` lists the positions of the offending receipts.
        """
        with self._tx() as db:
            return self._ack_in(db, receipts)

    def _ack_in(
        self, db: sqlite3.Connection, receipts: Sequence[Receipt]
    ) -> tuple[Settled, set[str]]:
        # Delete first and check the receipts against what was deleted: a stale receipt
        # raises and the caller's transaction rolls the deletes back. One statement fewer
        # than looking up first, inside the writers' lock.
        ids = list({r.msg_id for r in receipts})
        marks = ",".join("?" * len(ids))
        rows = {
            row[0]: row
            for row in db.execute(
                f"DELETE FROM messages WHERE msg_id IN ({marks})"
                " RETURNING msg_id, seq, topic, lease, token",
                ids,
            )
        }
        stale = [
            i
            for i, r in enumerate(receipts)
            if (row := rows.get(r.msg_id)) is not None and not r.matches(row[3], row[4])
        ]
        if stale:
            raise _stale(stale)
        if rows:
            seqs = [row[1] for row in rows.values()]
            db.execute(f"DELETE FROM bodies WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        gone = sum(1 for r in receipts if r.msg_id not in rows)
        return Settled(len(rows), gone), {row[2] for row in rows.values()}

    def nack(
        self,
        receipts: Sequence[Receipt],
        delay_ms: int,
        max_deliveries: Callable[[str], int],
    ) -> tuple[Settled, set[str], int]:
        """Give leased messages back now (or after ``delay_ms``); those delivered
        ``max_deliveries`` times go to the dead-letter queue instead (counted last)."""
        now = self._clock()
        dead = 0
        with self._tx() as db:
            found, gone = self._match(db, receipts)
            topics: set[str] = set()
            for seq, topic, state, deliveries in found:
                if state != LEASED:
                    continue  # already released (expired or nacked): nothing to do
                topics.add(topic)
                if deliveries >= max_deliveries(topic):
                    dead += 1
                    db.execute(
                        "UPDATE messages SET state = 3, visible_ms = 0, dead_ms = ? WHERE seq = ?",
                        (now, seq),
                    )
                elif delay_ms > 0:
                    db.execute(
                        "UPDATE messages SET state = 2, visible_ms = ? WHERE seq = ?",
                        (now + delay_ms, seq),
                    )
                else:
                    db.execute(
                        "UPDATE messages SET state = 0, visible_ms = 0 WHERE seq = ?", (seq,)
                    )
        return Settled(len(found), gone), topics, dead

    def extend(self, receipts: Sequence[Receipt], visibility_ms: int) -> Settled:
        """Push the leases' deadlines to now + ``visibility_ms``; a lease that already
        expired cannot be extended (409): the message may be someone else's by now."""
        now = self._clock()
        with self._tx() as db:
            rows = self._lookup(db, receipts)
            stale = [
                i
                for i, (r, row) in enumerate(zip(receipts, rows, strict=True))
                if row is not None
                and not (r.matches(row[2], row[3]) and row[4] == LEASED and row[5] > now)
            ]
            if stale:
                raise _stale(stale)
            seqs = {row[0] for row in rows if row is not None}
            db.executemany(
                "UPDATE messages SET visible_ms = ? WHERE seq = ?",
                [(now + visibility_ms, s) for s in seqs],
            )
        return Settled(len(seqs), sum(1 for row in rows if row is None))

    def topics_of(self, receipts: Sequence[Receipt]) -> set[str]:
        """The topics of the messages the receipts name (gone messages name none)."""
        if not receipts:
            return set()
        return {row[1] for row in self._lookup(self._db, receipts) if row is not None}

    def live_leases(self, receipts: Sequence[Receipt]) -> list[bool]:
        """For each receipt: is its lease still held (not settled, not expired)?"""
        now = self._clock()
        rows = self._lookup(self._db, receipts)
        return [
            row is not None and r.matches(row[2], row[3]) and row[4] == LEASED and row[5] > now
            for r, row in zip(receipts, rows, strict=True)
        ]

    def _lookup(
        self, db: sqlite3.Connection, receipts: Sequence[Receipt]
    ) -> list[tuple[Any, ...] | None]:
        """(seq, topic, lease, token, state, visible_ms, deliveries) per receipt."""
        ids = list({r.msg_id for r in receipts})
        marks = ",".join("?" * len(ids))
        found = {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT msg_id, seq, topic, lease, token, state, visible_ms, deliveries"
                f" FROM messages WHERE msg_id IN ({marks})",
                ids,
            )
        }
        return [found.get(r.msg_id) for r in receipts]

    def _match(
        self, db: sqlite3.Connection, receipts: Sequence[Receipt]
    ) -> tuple[list[tuple[int, str, int, int]], int]:
        """The (seq, topic, state, deliveries) each receipt holds, and how many are gone.

        Raises the 409 when any receipt belongs to an older lease.
        """
        rows = self._lookup(db, receipts)
        stale = [
            i
            for i, (r, row) in enumerate(zip(receipts, rows, strict=True))
            if row is not None and not r.matches(row[2], row[3])
        ]
        if stale:
            raise _stale(stale)
        found: dict[int, tuple[int, str, int, int]] = {}
        for row in rows:
            if row is not None:
                found[row[0]] = (row[0], row[1], row[4], row[6])
        return list(found.values()), sum(1 for row in rows if row is None)

    # ---- delete, dead letters --------------------------------------------------------

    def delete(self, topic: str, msg_id: str) -> bool:
        """Remove a message by id wherever it is (queued, leased, delayed or dead)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT seq FROM messages WHERE msg_id = ? AND topic = ?", (msg_id, topic)
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM messages WHERE seq = ?", (row[0],))
            db.execute("DELETE FROM bodies WHERE seq = ?", (row[0],))
        return True

    def dead_letters(
        self, topic: str, limit: int, cursor: int = 0
    ) -> tuple[list[DeadLetter], int | None]:
        """A page of the topic's dead letters in queue order, and the next page's cursor."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM messages m JOIN bodies b ON b.seq = m.seq"
            " WHERE m.topic = ? AND m.state = 3 AND m.visible_ms = 0 AND m.seq > ?"
            " ORDER BY m.seq LIMIT ?",
            (topic, cursor, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        letters = [
            DeadLetter(
                msg_id=row[1],
                topic=topic,
                payload=bytes(row[7]),
                headers=json.loads(row[6]),
                delivery_count=int(row[2]),
                enqueued_ms=int(row[4]),
                dead_ms=int(row[5] or 0),
            )
            for row in rows
        ]
        return letters, (int(rows[-1][0]) if more else None)

    def redrive(self, topic: str, msg_ids: Sequence[str] | None, limit: int) -> int:
        """Move dead letters back to the queue with a fresh delivery budget.

        They keep their place in the queue (their ``seq``), so a redriven message is
        retried before newer ones: a redrive is a retry, not a new message.
        """
        with self._tx() as db:
            if msg_ids is not None:
                moved = 0
                for msg_id in msg_ids:
                    cur = db.execute(
                        "UPDATE messages SET state = 0, visible_ms = 0, deliveries = 0,"
                        " dead_ms = NULL WHERE msg_id = ? AND topic = ? AND state = 3",
                        (msg_id, topic),
                    )
                    moved += cur.rowcount
                return moved
            cur = db.execute(
                "UPDATE messages SET state = 0, visible_ms = 0, deliveries = 0, dead_ms = NULL"
                " WHERE seq IN (SELECT seq FROM messages WHERE topic = ? AND state = 3"
                " AND visible_ms = 0 ORDER BY seq LIMIT ?)",
                (topic, limit),
            )
            return int(cur.rowcount)

    # ---- stats and housekeeping ------------------------------------------------------

    def stats(self, topic: str, max_deliveries: int) -> TopicStats:
        now = self._clock()
        counts = self._counts("WHERE topic = ?", (topic,), now)
        oldest = self._oldest_ms(topic)
        return TopicStats(
            topic=topic,
            depth=counts[0],
            in_flight=counts[1],
            delayed=counts[2],
            dlq_depth=counts[3],
            oldest_age_s=0.0 if oldest is None else max(0.0, (now - oldest) / 1000),
            max_deliveries=max_deliveries,
        )

    def totals(self) -> Totals:
        """Whole-store counts; one pass over the queue index (run at scrape time)."""
        now = self._clock()
        counts = self._counts("", (), now)
        row = self._db.execute(
            "SELECT enqueued_ms FROM messages WHERE state < 3 ORDER BY seq LIMIT 1"
        ).fetchone()
        age = 0.0 if row is None else max(0.0, (now - int(row[0])) / 1000)
        return Totals(counts[0], counts[1], counts[2], counts[3], age)

    def _counts(self, where: str, args: tuple[Any, ...], now: int) -> list[int]:
        """[visible now, leased, delayed, dead]; due leases and delays count as visible."""
        out = [0, 0, 0, 0]
        rows = self._db.execute(
            f"SELECT state, visible_ms > ?, COUNT(*) FROM messages {where} GROUP BY 1, 2",
            (now, *args),
        ).fetchall()
        for state, pending, n in rows:
            if state in (LEASED, DELAYED) and pending:
                out[state] += n
            elif state == DEAD:
                out[3] += n
            else:
                out[0] += n
        return out

    def _oldest_ms(self, topic: str) -> int | None:
        head = self._db.execute(
            "SELECT enqueued_ms FROM messages WHERE topic = ? AND state = 0 AND visible_ms = 0"
            " ORDER BY seq LIMIT 1",
            (topic,),
        ).fetchone()
        held = self._db.execute(
            "SELECT MIN(enqueued_ms) FROM messages WHERE topic = ? AND state IN (1, 2)",
            (topic,),
        ).fetchone()
        times = [int(r[0]) for r in (head, held) if r is not None and r[0] is not None]
        return min(times) if times else None

    def purge_dedup(self, batch: int = 5000) -> int:
        """Forget idempotency keys whose window has passed (bounded work per call)."""
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM dedup WHERE (topic, key) IN"
                " (SELECT topic, key FROM dedup WHERE expires_ms <= ? LIMIT ?)",
                (now, batch),
            )
            return int(cur.rowcount)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def _stale(positions: list[int]) -> RonError:
    return RonError(
        ErrorCode.CONFLICT,
        "stale receipt: the lease ended and the message was leased again",
        extra={"stale": positions},
    )


def _dump_headers(headers: Any) -> str:
    return json.dumps(dict(headers), separators=(",", ":")) if headers else "{}"


def _delivery(topic: str, row: tuple[Any, ...], token: str) -> Delivery:
    _seq, msg_id, deliveries, lease, enqueued_ms, _, headers, payload = row
    receipt = Receipt(msg_id, int(lease) + 1, token)
    return Delivery(
        msg_id=msg_id,
        topic=topic,
        payload=bytes(payload),
        headers=json.loads(headers) if headers != "{}" else {},
        delivery_count=int(deliveries) + 1,
        enqueued_ms=int(enqueued_ms),
        receipt=str(receipt),
    )


def _exclusive_lock(path: Path) -> int:
    """Hold an exclusive lock for the life of the store: one owner per file, ever."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RonError(
            ErrorCode.UNAVAILABLE, f"another process owns the mailbox database {path.parent}"
        ) from None
    return fd
