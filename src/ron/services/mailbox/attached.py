"""A gateway worker's mailbox: the hot operations on the shared file, the rest by IPC.

A mailbox request through the gateway used to cross two processes: the worker parsed
HTTP and called the mailbox service, which ran one SQLite transaction and answered.
The hop (framing, two socket writes, two wake-ups, a second event loop turn) cost as
much as the transaction itself. Here the worker runs the mailbox's own rules
(:meth:`MailboxService.attached`) against the same SQLite file for what needs no
waiting: send, a receive's immediate lease (with its acks), ack, nack and extend. It
is the same code, so every door refuses the same things with the same codes; the work
is counted in this process's ``mailbox_*`` counters (the node's /metrics sums every
process's).

What needs the owner stays with it, over IPC: a receive that found nothing and may
wait (the owner holds the waiters and is rung when anything arrives), subscriptions,
DELETE, stats, dead letters and redrive. While the owner has waiters, it hears through
the bell of every send, release and lease committed here (:mod:`~ron.services.mailbox.bell`).

Crash safety is the file's: each operation is one transaction committed before the
reply, writers take turns on the file's write lock, and a worker killed mid-operation
leaves an uncommitted transaction that SQLite discards.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from ron.kernel.config import Config
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import ServiceContext
from ron.services.mailbox.api import SUBSCRIPTION_POLL_S, MailboxAPI, subscription
from ron.services.mailbox.bell import BellSender
from ron.services.mailbox.jsonwire import deliveries_body
from ron.services.mailbox.model import (
    DeadLetterPage,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
    SubscriptionPoll,
    TopicStats,
)
from ron.services.mailbox.service import (
    Count,
    LabeledCount,
    MailboxClient,
    MailboxService,
    mailbox_counters,
    mailbox_path,
)


def can_attach(config: Config, peer: object) -> bool:
    """Attach when the node asks for it, the mailbox is a file, and it runs elsewhere
    (in one process the service is already a plain call away)."""
    return (
        config.mailbox.attach
        and mailbox_path(config) is not None
        and isinstance(peer, MailboxClient)
    )


class AttachedMailbox:
    """MailboxAPI for a gateway worker: local where it can be, the owner's otherwise."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        owner: MailboxAPI,
        counters: Mapping[str, Count],
        rejected: LabeledCount,
    ) -> None:
        self._bell = BellSender(run_dir)
        self._local = MailboxService.attached(config, self._bell, counters, rejected)
        self._owner = owner

    async def reconfigure(self, config: Config) -> None:
        await self._local.reconfigure(config)

    def close(self) -> None:
        self._local.close_attached()
        self._bell.close()

    @contextmanager
    def _ringing(self) -> Iterator[None]:
        """Ring the owner with the operation's news once it is committed (or failed)."""
        try:
            yield
        finally:
            self._bell.ring()

    # ---- served here -----------------------------------------------------------------

    async def send(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        with self._ringing():
            return await self._local.send(
                topic, payload, headers=headers, idempotency_key=idempotency_key
            )

    async def send_batch(self, topic: str, entries: Sequence[Outgoing]) -> list[SendResult]:
        with self._ringing():
            return await self._local.send_batch(topic, entries)

    async def _lease(
        self,
        topic: str,
        max_messages: int,
        visibility_s: float | None,
        wait_s: float,
        ack: Sequence[str],
        topics: Sequence[str] | None,
    ) -> tuple[Settled, list[Delivery]]:
        """Ack and lease here; when nothing was there and the caller may wait, the
        owner waits (the acks are already committed, as they would be there)."""
        with self._ringing():
            settled, got = await self._local.ack_and_receive(
                topic,
                ack=ack,
                topics=topics,
                max_messages=max_messages,
                visibility_s=visibility_s,
                wait_s=wait_s,
                may_wait=False,
            )
        if not got and wait_s > 0:
            got = await self._owner.receive(
                topic, max_messages=max_messages, visibility_s=visibility_s, wait_s=wait_s
            )
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
        settled, got = await self._lease(topic, max_messages, visibility_s, wait_s, ack, topics)
        return deliveries_body(got, settled if ack else None)

    async def receive(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
    ) -> list[Delivery]:
        return (await self._lease(topic, max_messages, visibility_s, wait_s, (), None))[1]

    async def ack(self, receipts: Sequence[str], *, topics: Sequence[str] | None = None) -> Settled:
        with self._ringing():
            return await self._local.ack(receipts, topics=topics)

    async def nack(
        self,
        receipts: Sequence[str],
        *,
        delay_s: float = 0.0,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        with self._ringing():
            return await self._local.nack(receipts, delay_s=delay_s, topics=topics)

    async def extend(
        self,
        receipts: Sequence[str],
        *,
        visibility_s: float,
        topics: Sequence[str] | None = None,
    ) -> Settled:
        with self._ringing():
            return await self._local.extend(receipts, visibility_s=visibility_s, topics=topics)

    # ---- the owner's -----------------------------------------------------------------

    async def delete(self, topic: str, msg_id: str) -> bool:
        return await self._owner.delete(topic, msg_id)

    async def poll_subscription(
        self,
        topic: str,
        *,
        holding: Sequence[str] = (),
        max_unacked: int | None = None,
        visibility_s: float | None = None,
        wait_s: float = SUBSCRIPTION_POLL_S,
    ) -> SubscriptionPoll:
        return await self._owner.poll_subscription(
            topic,
            holding=holding,
            max_unacked=max_unacked,
            visibility_s=visibility_s,
            wait_s=wait_s,
        )

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
    ) -> AsyncIterator[Delivery]:
        return subscription(self, topic, visibility_s=visibility_s, max_unacked=max_unacked)

    async def stats(self, topic: str) -> TopicStats:
        return await self._owner.stats(topic)

    async def dead_letters(
        self, topic: str, *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        return await self._owner.dead_letters(topic, limit=limit, cursor=cursor)

    async def redrive(
        self, topic: str, *, msg_ids: Sequence[str] | None = None, limit: int = 1000
    ) -> int:
        return await self._owner.redrive(topic, msg_ids=msg_ids, limit=limit)


class MailboxOf:
    """The mailbox as a front end's process (a gateway worker, an OAP server) reaches
    it, looked up per request (it may be enabled by a reload): attached to the shared
    file when the node allows it, else the peer itself."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._config = ctx.config
        self._peer: object = None
        self._attached: AttachedMailbox | None = None
        self._counters: dict[str, Counter] | None = None  # made once: one registry

    def __call__(self) -> MailboxAPI:
        try:
            peer: MailboxAPI = self._ctx.peers.get("mailbox")
        except KeyError:
            raise RonError(
                ErrorCode.NOT_FOUND, "the mailbox service is not enabled on this node"
            ) from None
        if peer is self._peer and self._attached is not None:
            return self._attached
        if not can_attach(self._config, peer):
            return peer
        self.close()
        if self._counters is None:
            self._counters = mailbox_counters(self._ctx.metrics)
        self._attached = AttachedMailbox(
            self._config,
            self._ctx.run_dir,
            peer,
            self._counters,
            self._ctx.metrics.rejected_total,
        )
        self._peer = peer
        return self._attached

    async def reconfigure(self, config: Config) -> None:
        """Limits follow reloads; the file, its mode and whether to attach are the
        start's (the owner keeps them until it restarts, and so must every writer)."""
        start = self._ctx.config.mailbox
        pinned = {k: getattr(start, k) for k in ("db", "in_memory", "synchronous", "attach")}
        self._config = dataclasses.replace(
            config,
            data_dir=self._ctx.config.data_dir,
            mailbox=dataclasses.replace(config.mailbox, **pinned),
        )
        if self._attached is not None:
            await self._attached.reconfigure(self._config)

    def close(self) -> None:
        if self._attached is not None:
            self._attached.close()
            self._attached = None
            self._peer = None


_MAILBOXES: weakref.WeakKeyDictionary[Any, MailboxOf] = weakref.WeakKeyDictionary()


def mailbox_of(ctx: ServiceContext) -> MailboxOf:
    """The one :class:`MailboxOf` of this process (a gateway's hot routes and /v1 routes
    share it, and so its attachment)."""
    found = _MAILBOXES.get(ctx.peers)
    if found is None:
        found = _MAILBOXES[ctx.peers] = MailboxOf(ctx)
    return found


def _conforms(attached: AttachedMailbox) -> MailboxAPI:
    """Never called: makes mypy prove the class implements the one interface."""
    return attached
