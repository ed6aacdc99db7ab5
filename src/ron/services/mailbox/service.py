"""MailboxService (the single writer of the mailbox database) and MailboxClient (its
IPC proxy): one typed interface, :class:`~ron.services.mailbox.api.MailboxAPI`.

The service is where the rules are applied: limits from the live config, topic and
header validation, who may wait and for how long. Every write is committed before the
method returns, so whatever a caller was told happened survives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ron.auth.caveats import topic_allowed
from ron.ipc import CallContext, IpcClient
from ron.kernel.config import Config, MailboxConfig
from ron.kernel.metrics import Metrics
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import Handler, Service, ServiceContext
from ron.services.mailbox.api import SUBSCRIPTION_POLL_S, MailboxAPI, subscription
from ron.services.mailbox.bell import BellReceiver, BellSender, Rung
from ron.services.mailbox.jsonwire import deliveries_body
from ron.services.mailbox.model import (
    MAX_BATCH,
    MAX_RECEIVE,
    DeadLetterPage,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
    SubscriptionPoll,
    TopicStats,
    check_batch,
    check_count,
    check_headers,
    check_idempotency_key,
    check_msg_id,
    check_seconds,
    check_topic,
)
from ron.services.mailbox.receipts import Receipt, parse_receipts
from ron.services.mailbox.store import MailboxStore, Released
from ron.services.mailbox.wakeups import DueTimer, Signals

log = logging.getLogger("ron.mailbox")

MAX_WAIT_S = 20.0
MAX_REDRIVE = 10_000
HOUSEKEEPING_S = 60.0
_NOTHING_SETTLED = Settled(0, 0)


def mailbox_path(config: Config) -> Path | None:
    """The database file: ``mailbox.db`` from config (``RON_MAILBOX__DB``), else
    ``mailbox.db`` in the data dir; None in memory-only mode."""
    if config.mailbox.in_memory:
        return None
    return config.mailbox.db if config.mailbox.db is not None else config.data_dir / "mailbox.db"


def _ready(topic: str) -> tuple[str, str]:
    return ("ready", topic)


def _released(topic: str) -> tuple[str, str]:
    return ("released", topic)


class Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class LabeledCount(Protocol):
    def labels(self, *values: str) -> Count: ...


_COUNTERS = {
    "sent": ("mailbox_sent_total", "Messages stored by SEND."),
    "duplicates": ("mailbox_duplicates_total", "SENDs answered from the idempotency window."),
    "delivered": ("mailbox_delivered_total", "Leases handed out."),
    "redelivered": ("mailbox_redelivered_total", "Leases of messages delivered before."),
    "acked": ("mailbox_acked_total", "Messages removed by ACK."),
    "nacked": ("mailbox_nacked_total", "Leases given back by NACK."),
    "expired": (
        "mailbox_released_total",
        "Messages made visible again by lease expiry or delay end.",
    ),
    "dead": ("mailbox_dead_lettered_total", "Messages moved to a DLQ."),
    "redriven": ("mailbox_redriven_total", "Dead letters put back."),
    "deleted": ("mailbox_deleted_total", "Messages removed by DELETE."),
    "stale": ("mailbox_stale_receipts_total", "Operations refused with 409."),
}


def mailbox_counters(metrics: Metrics) -> dict[str, Counter]:
    """The mailbox's counters in ``metrics``: the owner's, or an attached process's
    (each process counts the work it did; the node's /metrics sums them per family)."""
    return {key: metrics.counter(name, help_) for key, (name, help_) in _COUNTERS.items()}


class MailboxService(Service):
    """Owns the store; every mailbox operation of the node runs here, or in a gateway
    worker attached to the same file (:meth:`attached`) that reports to it."""

    name = "mailbox"

    async def start(self, ctx: ServiceContext) -> None:
        self._cfg: MailboxConfig = ctx.config.mailbox
        path = mailbox_path(ctx.config)
        shared = path is not None and self._cfg.attach and not ctx.single_process
        self._store = MailboxStore(path, synchronous=self._cfg.synchronous, shared=shared)
        self._signals = Signals()
        self._timer = DueTimer(self._store.now_ms, self._on_due)
        self._waiters = 0
        self._stopping = False
        m = ctx.metrics
        self._use_counters(mailbox_counters(m), m.rejected_total)
        m.registry.register(_StoreCollector(self))
        for topic, due in self._store.pending_due():
            self._timer.schedule(topic, due)
        # Shared: leases taken elsewhere are not all known to the timer, so a receive
        # asks the file what is due (:meth:`_lease_acking`).
        self._shared_file = shared
        self._bell: BellReceiver | None = None
        if shared:
            self._bell = BellReceiver(
                ctx.run_dir,
                self._on_bell,
                on_bad=lambda: self._rejected.labels("mailbox_bell_datagram").inc(),
            )
            self._bell.start()
        self._tasks = [
            asyncio.create_task(self._timer.run(), name="mailbox-due-timer"),
            asyncio.create_task(self._housekeeping(), name="mailbox-housekeeping"),
        ]

    @classmethod
    def attached(
        cls, config: Config, bell: BellSender, counters: Mapping[str, Count], rejected: LabeledCount
    ) -> MailboxService:
        """This service's rules in another process of the node, on the shared file.

        It serves what needs no waiting (send, a receive's immediate lease, ack, nack,
        extend) and counts it in ``counters`` (that process's metrics); what it would
        have signalled or scheduled is rung to the owner instead
        (:mod:`~ron.services.mailbox.bell`), which alone has waiters and a timer.
        """
        path = mailbox_path(config)
        if path is None:
            raise ValueError("a memory-only mailbox cannot be attached to")
        self = cls()
        self._cfg = config.mailbox
        self._store = MailboxStore(
            path, synchronous=self._cfg.synchronous, shared=True, owner=False
        )
        self._signals = _RungSignals(bell)
        self._timer = _RungTimer(bell, self._store.now_ms)
        self._waiters = 0
        self._stopping = False
        self._use_counters(counters, rejected)
        self._shared_file = True
        self._bell = None
        self._tasks = []
        return self

    def close_attached(self) -> None:
        """Release an attached instance's file (the owner's goes in :meth:`stop`)."""
        self._store.close()

    def _use_counters(self, c: Mapping[str, Count], rejected: LabeledCount) -> None:
        self._sent, self._duplicates = c["sent"], c["duplicates"]
        self._delivered, self._redelivered = c["delivered"], c["redelivered"]
        self._acked, self._nacked, self._expired = c["acked"], c["nacked"], c["expired"]
        self._dead, self._redriven, self._deleted = c["dead"], c["redriven"], c["deleted"]
        self._stale = c["stale"]
        self._rejected = rejected

    def _on_bell(self, rung: Rung) -> None:
        """Apply an attached process's news: wake and schedule."""
        if rung.everything:
            self._signals.notify_all()
            for topic, due in self._store.pending_due():
                self._timer.schedule(topic, due)
        for key in rung.notify:
            self._signals.notify(key)
        for topic, due in rung.due.items():
            self._timer.schedule(topic, due)

    @contextlib.contextmanager
    def _announced(self) -> Iterator[None]:
        """Count a waiter-to-be for the attached processes (bell.WaitingCount), from
        before its first attempt to lease until it leaves."""
        if self._bell is None:
            yield
            return
        self._bell.waiting.up()
        try:
            yield
        finally:
            self._bell.waiting.down()

    def _expect_due(self, topic: str) -> None:
        """Before waiting on ``topic``: time the end of leases taken elsewhere while
        nobody waited (they were not rung)."""
        if self._bell is not None and (due := self._store.next_due_ms(topic)) is not None:
            self._timer.schedule(topic, due)

    async def stop(self) -> None:
        self._stopping = True
        self._signals.notify_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._bell is not None:
            self._bell.drain()
            self._bell.close()
        self._store.close()

    async def reconfigure(self, config: Config) -> None:
        """Limits, windows and delivery budgets follow reloads; the file does not."""
        self._cfg = config.mailbox

    def health(self) -> tuple[bool, str]:
        for task in self._tasks:
            if task.done():
                return False, f"{task.get_name()} stopped"
        try:
            self._store.next_due_ms("")  # two index seeks: the file answers
        except Exception as exc:
            return False, f"database error: {type(exc).__name__}"
        return True, "ok"

    # ---- timers ----------------------------------------------------------------------

    def _on_due(self, topic: str) -> int | None:
        self._account_released(topic, self._store.release_due(topic, self._max_for(topic)))
        return self._store.next_due_ms(topic)

    def _account_released(self, topic: str, released: Released) -> None:
        if released.ready:
            self._expired.inc(released.ready)
            self._signals.notify(_ready(topic))
        if released.dead:
            self._dead.inc(released.dead)
        if released.ready or released.dead:
            self._signals.notify(_released(topic))

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self._cfg.dedup_window_s))
            try:
                for _ in range(1000):  # bounded: each batch is one short transaction
                    if self._store.purge_dedup() == 0:
                        break
                    await asyncio.sleep(0)  # let requests in between batches
            except Exception:
                log.exception("purging idempotency keys failed")

    def _max_for(self, topic: str) -> int:
        return self._cfg.max_deliveries_for(topic)

    # ---- send ------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        entry = Outgoing(payload, check_headers(headers), check_idempotency_key(idempotency_key))
        return (await self.send_batch(topic, [entry]))[0]

    async def send_batch(self, topic: str, entries: Sequence[Outgoing]) -> list[SendResult]:
        check_topic(topic)
        try:
            check_batch(entries, self._cfg.max_payload_bytes)
        except RonError as exc:
            self._rejected.labels(f"mailbox_{exc.code.value}").inc()
            raise
        results = self._store.send(
            topic, entries, dedup_window_ms=int(self._cfg.dedup_window_s * 1000)
        )
        new = sum(1 for r in results if not r.duplicate)
        self._sent.inc(new)
        self._duplicates.inc(len(results) - new)
        if new:
            self._signals.notify(_ready(topic))
        return results

    # ---- receive ---------------------------------------------------------------------

    def _visibility_ms(self, visibility_s: float | None) -> int:
        if visibility_s is None:
            return int(self._cfg.default_visibility_s * 1000)
        vis = check_seconds(visibility_s, "visibility_s", 0.001, self._cfg.max_visibility_s)
        return max(1, int(vis * 1000))

    def _lease(self, topic: str, limit: int, visibility_ms: int) -> list[Delivery]:
        return self._lease_acking(topic, limit, visibility_ms, ())[1]

    def _lease_acking(
        self, topic: str, limit: int, visibility_ms: int, ack: Sequence[Receipt]
    ) -> tuple[Settled, list[Delivery]]:
        """Lease up to ``limit``; receipts in ``ack`` are acknowledged first, in the same
        transaction (a stale one raises the 409 and nothing is leased)."""
        settled = _NOTHING_SETTLED
        if self._shared_file:
            # A shared file: leases taken elsewhere are not all on this timer, so ask the
            # file (a read, outside the writers' lock) whether anything is due, and only
            # then release inside the transaction. An empty poll reads and stops there
            # instead of queueing for the lock to find nothing.
            ready, release = self._store.work(topic)
            if not ack and not ready and not release:
                return settled, []
        else:
            # The timer holds the earliest due time of every topic with leases or
            # delays, so when it says nothing is due yet the receive skips releasing.
            due = self._timer.scheduled(topic)
            release = due is not None and due <= self._store.now_ms()
        if ack:
            try:
                settled, touched, got, released = self._store.ack_and_receive(
                    ack, topic, limit, visibility_ms, self._max_for(topic), release=release
                )
            except RonError as exc:
                self._count_stale(exc)
                raise
            self._acked_now(settled, touched)
        else:
            got, released = self._store.receive(
                topic, limit, visibility_ms, self._max_for(topic), release=release
            )
        self._account_released(topic, released)
        if got:
            self._delivered.inc(len(got))
            again = sum(1 for d in got if d.delivery_count > 1)
            if again:
                self._redelivered.inc(again)
            self._timer.schedule(topic, self._store.now_ms() + visibility_ms)
        return settled, got

    @contextlib.contextmanager
    def _waiter(self) -> Iterator[None]:
        if self._waiters >= self._cfg.max_waiters:
            self._rejected.labels("mailbox_waiters").inc()
            raise RonError(
                ErrorCode.UNAVAILABLE, "too many waiting receivers; retry", retry_after=1
            )
        self._waiters += 1
        try:
            yield
        finally:
            self._waiters -= 1

    async def receive(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
    ) -> list[Delivery]:
        """Lease up to ``max_messages``; with ``wait_s``, wait for the first one to arrive."""
        return (await self._receive(topic, (), max_messages, visibility_s, wait_s))[1]

    async def ack_and_receive(
        self,
        topic: str,
        *,
        ack: Sequence[str] = (),
        topics: Sequence[str] | None = None,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        may_wait: bool = True,
    ) -> tuple[Settled, list[Delivery]]:
        """Acknowledge ``ack`` (as :meth:`ack`, all or nothing) and lease the next
        messages in the same commit: a consumer's loop in one call instead of two. The
        ack is committed before any long-poll wait starts. ``may_wait=False`` (an
        attached process) checks ``wait_s`` but never waits: the owner does."""
        parsed = parse_receipts(list(ack), limit=MAX_BATCH) if ack else ()
        if parsed:
            self._check_topics(parsed, topics)
        return await self._receive(
            topic, parsed, max_messages, visibility_s, wait_s, may_wait=may_wait
        )

    async def _receive(
        self,
        topic: str,
        ack: Sequence[Receipt],
        max_messages: int,
        visibility_s: float | None,
        wait_s: float,
        *,
        may_wait: bool = True,
    ) -> tuple[Settled, list[Delivery]]:
        check_topic(topic)
        limit = check_count(max_messages, "max", 1, MAX_RECEIVE)
        vis = self._visibility_ms(visibility_s)
        wait = min(check_seconds(wait_s, "wait_s", 0, MAX_WAIT_S), self._cfg.max_wait_s)
        if wait <= 0 or not may_wait or self._stopping:
            return self._lease_acking(topic, limit, vis, ack)
        with self._announced():
            settled, got = self._lease_acking(topic, limit, vis, ack)
            if got or self._stopping:
                return settled, got
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            with self._waiter():
                self._expect_due(topic)
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self._stopping:
                        return settled, []
                    await self._signals.wait([_ready(topic)], remaining)
                    if self._stopping:
                        return settled, []
                    got = self._lease(topic, limit, vis)
                    if got:
                        return settled, got

    async def receive_body(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        ack: Sequence[str] = (),
        topics: Sequence[str] | None = None,
    ) -> bytes:
        settled, got = await self.ack_and_receive(
            topic,
            ack=ack,
            topics=topics,
            max_messages=max_messages,
            visibility_s=visibility_s,
            wait_s=wait_s,
        )
        return deliveries_body(got, settled if ack else None)

    async def poll_subscription(
        self,
        topic: str,
        *,
        holding: Sequence[str] = (),
        max_unacked: int | None = None,
        visibility_s: float | None = None,
        wait_s: float = SUBSCRIPTION_POLL_S,
    ) -> SubscriptionPoll:
        """Lease what a subscriber may take now (``max_unacked`` minus the leases it still
        holds), waiting up to ``wait_s`` for room and for messages."""
        check_topic(topic)
        cap = (
            self._cfg.subscribe_max_unacked
            if max_unacked is None
            else check_count(max_unacked, "max_unacked", 1, MAX_RECEIVE)
        )
        held = parse_receipts(list(holding), limit=MAX_RECEIVE) if holding else []
        vis = self._visibility_ms(visibility_s)
        wait = min(check_seconds(wait_s, "wait_s", 0, MAX_WAIT_S), self._cfg.max_wait_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with self._announced(), self._waiter():
            self._expect_due(topic)
            while True:
                flags = self._store.live_leases(held)
                held = [r for r, live in zip(held, flags, strict=True) if live]
                live = [str(r) for r in held]
                room = cap - len(held)
                if room > 0:
                    got = self._lease(topic, room, vis)
                    if got:
                        return SubscriptionPoll(got, live)
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping:
                    return SubscriptionPoll([], live)
                key = _ready(topic) if room > 0 else _released(topic)
                await self._signals.wait([key], remaining)
                if self._stopping:
                    return SubscriptionPoll([], live)

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
    ) -> AsyncIterator[Delivery]:
        return subscription(self, topic, visibility_s=visibility_s, max_unacked=max_unacked)

    # ---- settle ----------------------------------------------------------------------

    async def ack(self, receipts: Sequence[str], *, topics: Sequence[str] | None = None) -> Settled:
        parsed = parse_receipts(list(receipts), limit=MAX_BATCH)
        self._check_topics(parsed, topics)
        try:
            settled, touched = self._store.ack(parsed)
        except RonError as exc:
            self._count_stale(exc)
            raise
        self._acked_now(settled, touched)
        return settled

    def _acked_now(self, settled: Settled, touched: set[str]) -> None:
        """Count a committed ack and wake subscribers waiting for room on its topics."""
        self._acked.inc(settled.done)
        for topic in touched:
            self._signals.notify(_released(topic))

    async def nack(
        self,
        receipts: Sequence[str],
        *,
        delay_s: float = 0.0,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        parsed = parse_receipts(list(receipts), limit=MAX_BATCH)
        self._check_topics(parsed, topics)
        delay = check_seconds(delay_s, "delay_s", 0, self._cfg.max_visibility_s)
        try:
            settled, touched, dead = self._store.nack(parsed, int(delay * 1000), self._max_for)
        except RonError as exc:
            self._count_stale(exc)
            raise
        self._nacked.inc(settled.done)
        self._dead.inc(dead)
        for topic in touched:
            if delay > 0:
                self._timer.schedule(topic, self._store.now_ms() + int(delay * 1000))
            self._signals.notify(_ready(topic))
            self._signals.notify(_released(topic))
        return settled

    async def extend(
        self,
        receipts: Sequence[str],
        *,
        visibility_s: float,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        parsed = parse_receipts(list(receipts), limit=MAX_BATCH)
        self._check_topics(parsed, topics)
        vis = self._visibility_ms(visibility_s)
        try:
            return self._store.extend(parsed, vis)
        except RonError as exc:
            self._count_stale(exc)
            raise

    def _check_topics(self, receipts: Sequence[Receipt], topics: Sequence[str] | None) -> None:
        """403 when a receipt's message is in a topic the caller's token does not cover.

        A message never changes topic, so checking before the settling transaction is
        as good as checking inside it.
        """
        if topics is None:
            return
        for topic in self._store.topics_of(receipts):
            if not all(topic_allowed(pattern, topic) for pattern in topics):
                raise RonError(
                    ErrorCode.FORBIDDEN, "token does not allow this request: another topic"
                )

    def _count_stale(self, exc: RonError) -> None:
        if exc.code is ErrorCode.CONFLICT:
            self._stale.inc()

    async def delete(self, topic: str, msg_id: str) -> bool:
        check_topic(topic)
        check_msg_id(msg_id)
        gone = self._store.delete(topic, msg_id)
        if gone:
            self._deleted.inc()
            self._signals.notify(_released(topic))
        return gone

    # ---- stats and dead letters ------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        check_topic(topic)
        return self._store.stats(topic, self._max_for(topic))

    async def dead_letters(
        self, topic: str, *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        check_topic(topic)
        check_count(limit, "limit", 1, MAX_RECEIVE)
        after = 0
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 19:
                raise RonError(ErrorCode.BAD_REQUEST, "bad cursor")
            after = int(cursor)
        letters, nxt = self._store.dead_letters(topic, limit, after)
        return DeadLetterPage(letters, None if nxt is None else str(nxt))

    async def redrive(
        self, topic: str, *, msg_ids: Sequence[str] | None = None, limit: int = 1000
    ) -> int:
        check_topic(topic)
        check_count(limit, "max", 1, MAX_REDRIVE)
        ids = None
        if msg_ids is not None:
            if not 1 <= len(msg_ids) <= MAX_REDRIVE:
                raise RonError(ErrorCode.BAD_REQUEST, f"msg_ids holds 1..{MAX_REDRIVE} ids")
            ids = [check_msg_id(m) for m in msg_ids]
        moved = self._store.redrive(topic, ids, limit)
        if moved:
            self._redriven.inc(moved)
            self._signals.notify(_ready(topic))
        return moved

    def waiters(self) -> int:
        return self._waiters

    # ---- IPC -------------------------------------------------------------------------

    def handlers(self) -> Mapping[str, Handler]:
        async def send(args: dict[str, Any], ctx: CallContext) -> Any:
            entries = args.get("entries")
            if not isinstance(entries, list):
                raise RonError(ErrorCode.BAD_REQUEST, "entries must be a list")
            batch = [Outgoing.from_wire(e) for e in entries if isinstance(e, dict)]
            if len(batch) != len(entries):
                raise RonError(ErrorCode.BAD_REQUEST, "entries must be maps")
            return [r.to_wire() for r in await self.send_batch(args.get("topic"), batch)]  # type: ignore[arg-type]

        async def receive_body(args: dict[str, Any], ctx: CallContext) -> Any:
            ack = args.get("ack") or ()
            if not isinstance(ack, list | tuple):
                raise RonError(ErrorCode.BAD_REQUEST, "ack must be a list of receipts")
            return await self.receive_body(
                args.get("topic"),  # type: ignore[arg-type]
                **_receive_args(args),
                ack=ack,
                topics=args.get("topics"),
            )

        async def receive(args: dict[str, Any], ctx: CallContext) -> Any:
            got = await self.receive(args.get("topic"), **_receive_args(args))  # type: ignore[arg-type]
            return [d.to_wire() for d in got]

        async def ack(args: dict[str, Any], ctx: CallContext) -> Any:
            topics = _list(args, "topics", required=False) or None
            return (await self.ack(_list(args, "receipts"), topics=topics)).to_wire()

        async def nack(args: dict[str, Any], ctx: CallContext) -> Any:
            settled = await self.nack(
                _list(args, "receipts"),
                delay_s=args.get("delay_s", 0.0),
                topics=_list(args, "topics", required=False) or None,
            )
            return settled.to_wire()

        async def extend(args: dict[str, Any], ctx: CallContext) -> Any:
            settled = await self.extend(
                _list(args, "receipts"),
                visibility_s=args.get("visibility_s"),  # type: ignore[arg-type]
                topics=_list(args, "topics", required=False) or None,
            )
            return settled.to_wire()

        async def delete(args: dict[str, Any], ctx: CallContext) -> Any:
            return await self.delete(args.get("topic"), args.get("msg_id"))  # type: ignore[arg-type]

        async def poll(args: dict[str, Any], ctx: CallContext) -> Any:
            result = await self.poll_subscription(
                args.get("topic"),  # type: ignore[arg-type]
                holding=_list(args, "holding", required=False),
                max_unacked=args.get("max_unacked"),
                visibility_s=args.get("visibility_s"),
                wait_s=args.get("wait_s", SUBSCRIPTION_POLL_S),
            )
            return result.to_wire()

        async def stats(args: dict[str, Any], ctx: CallContext) -> Any:
            return (await self.stats(args.get("topic"))).to_wire()  # type: ignore[arg-type]

        async def dlq(args: dict[str, Any], ctx: CallContext) -> Any:
            page = await self.dead_letters(
                args.get("topic"),  # type: ignore[arg-type]
                limit=args.get("limit", 100),
                cursor=args.get("cursor"),
            )
            return page.to_wire()

        async def redrive(args: dict[str, Any], ctx: CallContext) -> Any:
            ids = args.get("msg_ids")
            return await self.redrive(
                args.get("topic"),  # type: ignore[arg-type]
                msg_ids=None if ids is None else _list(args, "msg_ids"),
                limit=args.get("limit", 1000),
            )

        return {
            "send": send,
            "receive": receive,
            "receive_body": receive_body,
            "ack": ack,
            "nack": nack,
            "extend": extend,
            "delete": delete,
            "poll": poll,
            "stats": stats,
            "dlq": dlq,
            "redrive": redrive,
        }


def _list(args: dict[str, Any], key: str, *, required: bool = True) -> list[str]:
    value = args.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RonError(ErrorCode.BAD_REQUEST, f"{key} must be a list of strings")
    return value


class _RungSignals(Signals):
    """Signals of an attached process: nobody waits here; the owner's waiters are
    woken by the bell."""

    def __init__(self, bell: BellSender) -> None:
        super().__init__()
        self._bell = bell

    def notify(self, key: Any) -> None:
        kind, topic = key
        self._bell.notify(kind, topic)


class _RungTimer(DueTimer):
    """The timer of an attached process: schedules go to the owner's timer (receives
    here release what is due themselves)."""

    def __init__(self, bell: BellSender, clock_ms: Callable[[], int]) -> None:
        super().__init__(clock_ms, lambda topic: None)
        self._bell = bell

    def schedule(self, topic: str, at_ms: int) -> None:
        self._bell.due(topic, at_ms)


class _StoreCollector(Collector):
    """Gauges computed from the store at scrape time, node-wide.

    No per-topic labels: topics are chosen by clients and unbounded, and a label per
    topic would let any client grow every scrape without limit. Per-topic numbers are
    one ``GET /v1/mailbox/{topic}/stats`` away.
    """

    def __init__(self, service: MailboxService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        try:
            totals = self._service._store.totals()
        except Exception:  # closed or failing store: the scrape must still succeed
            return
        msgs = GaugeMetricFamily("mailbox_messages", "Messages stored, by state.", labels=["state"])
        msgs.add_metric(["ready"], totals.ready)
        msgs.add_metric(["in_flight"], totals.in_flight)
        msgs.add_metric(["delayed"], totals.delayed)
        msgs.add_metric(["dead"], totals.dead)
        yield msgs
        yield GaugeMetricFamily(
            "mailbox_oldest_message_age_seconds",
            "Age of the oldest message not in a DLQ.",
            value=totals.oldest_age_s,
        )
        yield GaugeMetricFamily(
            "mailbox_waiters",
            "Long-poll receives and subscription polls waiting.",
            value=self._service.waiters(),
        )


# Calls that may wait (long-poll, subscriptions) get a pool of their own, so that
# waiting receivers can never starve sends and acks of connections.
WAITING_POOL = 128
_CALL_TIMEOUT = 10.0


class MailboxClient:
    """The mailbox in another process, behind the same interface as MailboxService."""

    def __init__(self, ipc: IpcClient) -> None:
        self._ipc = ipc
        self._waiting = IpcClient(ipc.path, pool_size=WAITING_POOL, default_timeout=30.0)

    async def send(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        entry = Outgoing(payload, dict(headers or {}), idempotency_key)
        return (await self.send_batch(topic, [entry]))[0]

    async def send_batch(self, topic: str, entries: Sequence[Outgoing]) -> list[SendResult]:
        data = await self._ipc.call(
            "send",
            {"topic": topic, "entries": [e.to_wire() for e in entries]},
            timeout=_CALL_TIMEOUT,
        )
        return [SendResult.from_wire(d) for d in data]

    async def receive_body(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        ack: Sequence[str] = (),
        topics: Sequence[str] | None = None,
    ) -> bytes:
        extra: dict[str, Any] = {}
        if ack:
            extra["ack"] = list(ack)
            if topics is not None:
                extra["topics"] = list(topics)
        reply = await self._receive(
            "receive_body", topic, max_messages, visibility_s, wait_s, **extra
        )
        return _bytes(reply)

    async def receive(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
    ) -> list[Delivery]:
        data = await self._receive("receive", topic, max_messages, visibility_s, wait_s)
        return [Delivery.from_wire(d) for d in data]

    async def _receive(
        self,
        op: str,
        topic: str,
        max_messages: int,
        visibility_s: float | None,
        wait_s: float,
        **extra: Any,
    ) -> Any:
        """receive and receive_body: a call that may wait goes on the waiting pool."""
        args: dict[str, Any] = {
            "topic": topic,
            "max": max_messages,
            "visibility_s": visibility_s,
            **extra,
        }
        if wait_s:
            args["wait_s"] = wait_s
            return await self._waiting.call(op, args, timeout=_wait_budget(wait_s))
        return await self._ipc.call(op, args, timeout=_CALL_TIMEOUT)

    async def _settle(
        self, op: str, receipts: Sequence[str], topics: Sequence[str] | None, **extra: Any
    ) -> Settled:
        """ack, nack and extend: the receipts, the caller's topic caveats, the op's own."""
        args: dict[str, Any] = {"receipts": list(receipts), **extra}
        if topics is not None:
            args["topics"] = list(topics)
        return Settled.from_wire(await self._ipc.call(op, args, timeout=_CALL_TIMEOUT))

    async def ack(self, receipts: Sequence[str], *, topics: Sequence[str] | None = None) -> Settled:
        return await self._settle("ack", receipts, topics)

    async def nack(
        self,
        receipts: Sequence[str],
        *,
        delay_s: float = 0.0,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        return await self._settle("nack", receipts, topics, delay_s=delay_s)

    async def extend(
        self,
        receipts: Sequence[str],
        *,
        visibility_s: float,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        return await self._settle("extend", receipts, topics, visibility_s=visibility_s)

    async def delete(self, topic: str, msg_id: str) -> bool:
        return bool(
            await self._ipc.call(
                "delete", {"topic": topic, "msg_id": msg_id}, timeout=_CALL_TIMEOUT
            )
        )

    async def poll_subscription(
        self,
        topic: str,
        *,
        holding: Sequence[str] = (),
        max_unacked: int | None = None,
        visibility_s: float | None = None,
        wait_s: float = SUBSCRIPTION_POLL_S,
    ) -> SubscriptionPoll:
        data = await self._waiting.call(
            "poll",
            {
                "topic": topic,
                "holding": list(holding),
                "max_unacked": max_unacked,
                "visibility_s": visibility_s,
                "wait_s": wait_s,
            },
            timeout=_wait_budget(wait_s),
        )
        return SubscriptionPoll.from_wire(data)

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
    ) -> AsyncIterator[Delivery]:
        return subscription(self, topic, visibility_s=visibility_s, max_unacked=max_unacked)

    async def stats(self, topic: str) -> TopicStats:
        return TopicStats.from_wire(
            await self._ipc.call("stats", {"topic": topic}, timeout=_CALL_TIMEOUT)
        )

    async def dead_letters(
        self, topic: str, *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        data = await self._ipc.call(
            "dlq", {"topic": topic, "limit": limit, "cursor": cursor}, timeout=_CALL_TIMEOUT
        )
        return DeadLetterPage.from_wire(data)

    async def redrive(
        self, topic: str, *, msg_ids: Sequence[str] | None = None, limit: int = 1000
    ) -> int:
        args: dict[str, Any] = {"topic": topic, "limit": limit}
        if msg_ids is not None:
            args["msg_ids"] = list(msg_ids)
        return int(await self._ipc.call("redrive", args, timeout=_CALL_TIMEOUT))

    async def close(self) -> None:
        await self._waiting.close()


def _wait_budget(wait_s: float) -> float:
    """The IPC deadline of a waiting call: its wait plus room to answer."""
    return max(0.0, min(float(wait_s), MAX_WAIT_S)) + 5.0


def _conforms(service: MailboxService, client: MailboxClient) -> tuple[MailboxAPI, MailboxAPI]:
    """Never called: makes mypy prove both sides implement the one interface."""
    return service, client


def _bytes(reply: object) -> bytes:
    """A rendered body from the mailbox; anything else means a confused peer."""
    if not isinstance(reply, bytes):
        raise RonError(ErrorCode.UPSTREAM_UNAVAILABLE, "mailbox replied with no body")
    return reply


def _receive_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a receive call from its IPC arguments (checked by
    :meth:`MailboxService.receive`)."""
    return {
        "max_messages": args.get("max", 1),
        "visibility_s": args.get("visibility_s"),
        "wait_s": args.get("wait_s", 0.0),
    }
