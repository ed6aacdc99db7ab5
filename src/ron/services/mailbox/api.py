"""MailboxAPI: what every front end (HTTP gateway, OAP server, CLI tools in-process)
may ask of the mailbox, wherever it runs.

:class:`~ron.services.mailbox.service.MailboxService` implements it in the mailbox's
own process (and for ``--single-process`` callers), and
:class:`~ron.services.mailbox.service.MailboxClient` over IPC. Front ends check only
the shapes of their own protocol: the service is the one place that applies the rules,
so every door refuses the same things with the same codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Protocol

from ron.proto.envelope import RonError
from ron.services.mailbox.model import (
    DeadLetterPage,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
    SubscriptionPoll,
    TopicStats,
)

# A subscription's polls wait this long at most, so that a front end hears back
# regularly even when nothing happens (SSE heartbeats, noticing a gone client).
SUBSCRIPTION_POLL_S = 15.0


class MailboxAPI(Protocol):
    """The mailbox's operations (REFERENCE §6); errors are RonError with codes."""

    async def send(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult: ...

    async def send_batch(self, topic: str, entries: Sequence[Outgoing]) -> list[SendResult]: ...

    # ``receive`` with the reply rendered by the mailbox as the JSON doors send it
    # (``jsonwire.deliveries_body``): the payloads are encoded once, in one process,
    # instead of crossing the IPC hop as objects to be rendered on the other side.
    # ``ack``: receipts acknowledged first, in the same commit (as ``ack`` with
    # ``topics``); the reply then also says how many were acked and gone.
    async def receive_body(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        ack: Sequence[str] = (),
        topics: Sequence[str] | None = None,
    ) -> bytes: ...

    async def receive(
        self,
        topic: str,
        *,
        max_messages: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
    ) -> list[Delivery]: ...

    # ``topics``: the caller's capability allows only topics matching all of these
    # patterns (None: any); a receipt of another topic makes the call 403.
    async def ack(
        self, receipts: Sequence[str], *, topics: Sequence[str] | None = None
    ) -> Settled: ...

    async def nack(
        self,
        receipts: Sequence[str],
        *,
        delay_s: float = 0.0,
        topics: Sequence[str] | None = None,
    ) -> Settled: ...

    async def extend(
        self,
        receipts: Sequence[str],
        *,
        visibility_s: float,
        topics: Sequence[str] | None = None,
    ) -> Settled: ...

    async def delete(self, topic: str, msg_id: str) -> bool: ...

    async def poll_subscription(
        self,
        topic: str,
        *,
        holding: Sequence[str] = (),
        max_unacked: int | None = None,
        visibility_s: float | None = None,
        wait_s: float = SUBSCRIPTION_POLL_S,
    ) -> SubscriptionPoll: ...

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
    ) -> AsyncIterator[Delivery]: ...

    async def stats(self, topic: str) -> TopicStats: ...

    async def dead_letters(
        self, topic: str, *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage: ...

    async def redrive(
        self, topic: str, *, msg_ids: Sequence[str] | None = None, limit: int = 1000
    ) -> int: ...


async def subscription(
    api: MailboxAPI,
    topic: str,
    *,
    visibility_s: float | None = None,
    max_unacked: int | None = None,
) -> AsyncIterator[Delivery]:
    """Deliveries pushed as they arrive, with flow control, surviving mailbox restarts.

    Same lease and ack rules as receive; the polling itself is :func:`follow`'s.
    """
    polls = follow(api, topic, first=None, visibility_s=visibility_s, max_unacked=max_unacked)
    try:
        async for deliveries in polls:
            for delivery in deliveries:
                yield delivery
    finally:
        await polls.aclose()


async def follow(
    api: MailboxAPI,
    topic: str,
    *,
    first: SubscriptionPoll | None,
    visibility_s: float | None,
    max_unacked: int | None,
) -> AsyncGenerator[list[Delivery], None]:
    """The deliveries of each poll of a subscription, starting with ``first`` (None:
    with a poll of its own).

    What a push front end (SSE, OAP subscribe) streams: an empty list is a poll that came
    back with nothing (at least every 15 s: time for a heartbeat). Each poll tells the
    mailbox which receipts this subscriber still holds; the mailbox leases no more than
    ``max_unacked`` at a time, so a slow consumer is not buried in leases that expire
    before it gets to them. Retryable failures (the mailbox restarting) are retried with
    backoff; any other error is raised.
    """
    poll = first
    holding: list[str] = []
    backoff = 0.05
    while True:
        if poll is not None:
            holding = [*poll.live, *(d.receipt for d in poll.deliveries)]
            yield list(poll.deliveries)
        try:
            poll = await api.poll_subscription(
                topic, holding=holding, max_unacked=max_unacked, visibility_s=visibility_s
            )
            backoff = 0.05
        except RonError as exc:
            if not exc.retryable:
                raise
            poll = None  # keep holding what we held; ask again after the restart
            await asyncio.sleep(backoff)  # the mailbox is restarting: nothing to wait on
            backoff = min(backoff * 2, 2.0)
