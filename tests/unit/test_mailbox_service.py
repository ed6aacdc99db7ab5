"""The mailbox service in-process (real SQLite file): validation, wake-ups, flow control.

Waiting is measured, never slept for: a long-poll is started, the event that must end
it is caused, and the poll must return long before its own deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ron.ipc.framing import MAX_FRAME, encode
from ron.kernel.config import MAILBOX_HARD_MAX_PAYLOAD, Config, ConfigError, MailboxConfig
from ron.kernel.metrics import Metrics
from ron.proto.envelope import ErrorCode, RonError
from ron.services.base import ServiceContext
from ron.services.mailbox.attached import AttachedMailbox
from ron.services.mailbox.model import (
    MAX_HEADERS,
    Outgoing,
    check_batch,
    check_headers,
    check_idempotency_key,
    check_topic,
    entry_budget,
)
from ron.services.mailbox.receipts import new_tokens, parse_receipt, parse_receipts
from ron.services.mailbox.service import MailboxService, mailbox_counters
from ron.services.mailbox.wakeups import DueTimer, Signals
from support.waiting import wait_until


async def started(tmp_path: Path, **mailbox: object) -> MailboxService:
    config = Config(data_dir=tmp_path, mailbox=MailboxConfig(**mailbox))  # type: ignore[arg-type]
    service = MailboxService()
    await service.start(ServiceContext("mailbox", config, Metrics(), tmp_path, tmp_path, None))  # type: ignore[arg-type]
    return service


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[MailboxService]:
    service = await started(tmp_path, max_deliveries=2)
    yield service
    await service.stop()


# ---- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["", "a b", "a/b", "x" * 129, "ü", None, 3])
def test_bad_topics(topic: object) -> None:
    with pytest.raises(RonError) as err:
        check_topic(topic)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_good_topic() -> None:
    assert check_topic("orders.eu-1_x") == "orders.eu-1_x"
    assert check_topic("x" * 128)


@pytest.mark.parametrize(
    "headers",
    [
        {"Upper": "v"},
        {"a": "line\nbreak"},
        {"a": 1},
        {"": "v"},
        {f"h{i}": "v" for i in range(MAX_HEADERS + 1)},
        {"a": "v" * 257},
        {f"h{i}": "v" * 250 for i in range(9)},
        ["not", "a", "map"],
    ],
)
def test_bad_headers(headers: object) -> None:
    with pytest.raises(RonError):
        check_headers(headers)


def test_idempotency_key_rules() -> None:
    assert check_idempotency_key(None) is None
    assert check_idempotency_key("order-42") == "order-42"
    for bad in ("", "has space", "x" * 129, 5):
        with pytest.raises(RonError):
            check_idempotency_key(bad)


def test_payload_and_batch_caps_are_413() -> None:
    cap = 1000
    check_batch([Outgoing(b"x" * cap)], cap)
    with pytest.raises(RonError) as err:
        check_batch([Outgoing(b"x" * (cap + 1))], cap)
    assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(RonError) as err:
        check_batch([Outgoing(b"x" * 2000)] * 3, 2000)  # each fits, not all
    assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(RonError) as err:
        check_batch([], cap)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_the_largest_request_fits_one_ipc_frame() -> None:
    """A full payload with the largest headers and key, or any batch within the same
    budget, must travel as one IPC frame to the mailbox."""
    headers = {f"{i:02d}" + "h" * 62: "v" * 62 for i in range(MAX_HEADERS)}
    biggest = Outgoing(b"x" * MAILBOX_HARD_MAX_PAYLOAD, check_headers(headers), "k" * 128)
    check_batch([biggest], MAILBOX_HARD_MAX_PAYLOAD)
    assert biggest.cost() <= entry_budget(MAILBOX_HARD_MAX_PAYLOAD)
    many = [Outgoing(b"x" * 10_000, {"a": "b"}, f"key-{i}") for i in range(100)]
    check_batch(many, MAILBOX_HARD_MAX_PAYLOAD)
    for entries in ([biggest], many):
        args = {"topic": "t" * 128, "entries": [e.to_wire() for e in entries]}
        request = {"id": 2**63, "m": "send", "a": args, "dl": 9.5, "s": False}
        frame = encode(request, MAX_FRAME)
        assert len(frame) <= MAX_FRAME + 4


def test_mailbox_config_rules() -> None:
    with pytest.raises(ConfigError):
        MailboxConfig(max_payload_bytes=MAILBOX_HARD_MAX_PAYLOAD + 1)
    with pytest.raises(ConfigError):
        MailboxConfig(synchronous="off")
    with pytest.raises(ConfigError):
        MailboxConfig(max_deliveries_by_topic={"bad topic": 3})
    with pytest.raises(ConfigError):
        MailboxConfig(max_wait_s=21)
    cfg = MailboxConfig(max_deliveries_by_topic={"orders": 9})
    assert (cfg.max_deliveries_for("orders"), cfg.max_deliveries_for("x")) == (9, 5)


def test_receipt_parsing() -> None:
    (token,) = new_tokens(1)
    text = f"01ARZ3NDEKTSV4RRFFQ69G5FAV.7.{token}"
    r = parse_receipt(text)
    assert (r.msg_id, r.lease, r.token, str(r)) == ("01ARZ3NDEKTSV4RRFFQ69G5FAV", 7, token, text)
    for bad in ("", "x.1.y", f"01ARZ3NDEKTSV4RRFFQ69G5FAV.-1.{token}", text + "A", 42, None):
        with pytest.raises(RonError) as err:
            parse_receipt(bad)
        assert err.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(RonError):
        parse_receipts([])
    with pytest.raises(RonError):
        parse_receipts([text] * 101)
    assert len(set(new_tokens(1000))) == 1000


# ---- wake-ups -----------------------------------------------------------------------


async def test_signals_wake_every_waiter_of_a_key_only() -> None:
    signals = Signals()
    a = asyncio.create_task(signals.wait(["a"], 30))
    b = asyncio.create_task(signals.wait(["b", "a"], 30))
    c = asyncio.create_task(signals.wait(["c"], 30))
    await asyncio.sleep(0)
    assert signals.waiting() == 3
    signals.notify("a")
    assert await a and await b
    assert not c.done()
    assert await signals.wait(["c"], 0.01) is False
    signals.notify("c")
    assert await c
    assert signals.waiting() == 0


async def test_due_timer_fires_the_earliest_first_and_reschedules() -> None:
    def clock() -> int:
        return int(time.monotonic() * 1000)

    fired: list[str] = []
    done = asyncio.Event()

    def on_due(topic: str) -> int | None:
        fired.append(topic)
        if len(fired) == 3:
            done.set()
        return clock() + 60 if topic == "a" and fired.count("a") == 1 else None

    timer = DueTimer(clock, on_due)
    task = asyncio.create_task(timer.run())
    t0 = clock()
    timer.schedule("b", t0 + 40)
    timer.schedule("a", t0 + 20)
    timer.schedule("a", t0 + 500)  # later than what "a" has: ignored
    assert timer.scheduled("a") == t0 + 20
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    assert fired == ["a", "b", "a"]
    assert timer.scheduled("a") is None


# ---- service ------------------------------------------------------------------------


async def test_long_poll_returns_as_soon_as_a_message_arrives(mailbox: MailboxService) -> None:
    started_at = time.monotonic()
    poll = asyncio.create_task(mailbox.receive("t", max_messages=5, wait_s=20))
    await asyncio.sleep(0)
    assert not poll.done()
    await mailbox.send("t", b"hello")
    got = await asyncio.wait_for(poll, 5)
    assert [d.payload for d in got] == [b"hello"]
    assert time.monotonic() - started_at < 5


async def test_long_poll_wakes_when_a_lease_expires(mailbox: MailboxService) -> None:
    await mailbox.send("t", b"x")
    (first,) = await mailbox.receive("t", visibility_s=0.2)
    started_at = time.monotonic()
    (again,) = await mailbox.receive("t", wait_s=20)
    assert again.msg_id == first.msg_id and again.delivery_count == 2
    assert time.monotonic() - started_at < 10


async def test_dead_letters_after_max_deliveries_by_timer(mailbox: MailboxService) -> None:
    await mailbox.send("t", b"poison")
    for _ in range(2):
        (d,) = await mailbox.receive("t", visibility_s=0.05, wait_s=10)
    # The due timer moves it when the last lease ends.
    await wait_until(lambda: mailbox._store.stats("t", 2).dlq_depth == 1, 10, "dead letter")
    stats = await mailbox.stats("t")
    assert (stats.dlq_depth, stats.depth, stats.in_flight) == (1, 0, 0)
    page = await mailbox.dead_letters("t")
    assert [x.msg_id for x in page.letters] == [d.msg_id]
    assert await mailbox.redrive("t") == 1
    (back,) = await mailbox.receive("t")
    assert back.delivery_count == 1


async def test_subscription_never_holds_more_than_max_unacked(mailbox: MailboxService) -> None:
    for i in range(5):
        await mailbox.send("t", b"%d" % i)
    first = await mailbox.poll_subscription("t", max_unacked=2, wait_s=0)
    assert [d.payload for d in first.deliveries] == [b"0", b"1"]
    holding = [d.receipt for d in first.deliveries]
    full = await mailbox.poll_subscription("t", holding=holding, max_unacked=2, wait_s=0.05)
    assert full.deliveries == [] and full.live == holding
    waiting = asyncio.create_task(
        mailbox.poll_subscription("t", holding=holding, max_unacked=2, wait_s=20)
    )
    await asyncio.sleep(0)
    assert not waiting.done()
    await mailbox.ack(holding[:1])  # room for one more: the waiting poll takes it
    step = await asyncio.wait_for(waiting, 5)
    assert [d.payload for d in step.deliveries] == [b"2"]
    assert step.live == holding[1:]


async def test_subscribe_iterator_delivers_in_order(mailbox: MailboxService) -> None:
    for i in range(3):
        await mailbox.send("t", b"%d" % i)
    seen = []
    async for d in mailbox.subscribe("t", max_unacked=10):
        seen.append(d.payload)
        await mailbox.ack([d.receipt])
        if len(seen) == 3:
            break
    assert seen == [b"0", b"1", b"2"]


async def test_waiters_are_capped(tmp_path: Path) -> None:
    service = await started(tmp_path, max_waiters=1)
    try:
        first = asyncio.create_task(service.receive("t", wait_s=20))
        await asyncio.sleep(0)
        with pytest.raises(RonError) as err:
            await service.receive("t", wait_s=20)
        assert err.value.code is ErrorCode.UNAVAILABLE
        assert await service.receive("t") == []  # a receive that does not wait is fine
        await service.send("t", b"x")
        assert len(await first) == 1
    finally:
        await service.stop()


async def test_limits_follow_reconfigure(mailbox: MailboxService, tmp_path: Path) -> None:
    with pytest.raises(RonError) as err:
        await mailbox.receive("t", max_messages=101)
    assert err.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(RonError):
        await mailbox.receive("t", wait_s=21)
    with pytest.raises(RonError):
        await mailbox.receive("t", visibility_s=0)
    config = Config(data_dir=tmp_path, mailbox=MailboxConfig(max_payload_bytes=10))
    await mailbox.reconfigure(config)
    with pytest.raises(RonError) as err:
        await mailbox.send("t", b"x" * 11)
    assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    await mailbox.reconfigure(dataclasses.replace(config, mailbox=MailboxConfig()))
    assert (await mailbox.send("t", b"x" * 11)).msg_id


async def test_stop_releases_waiters(tmp_path: Path) -> None:
    service = await started(tmp_path)
    poll = asyncio.create_task(service.receive("t", wait_s=20))
    await asyncio.sleep(0)
    await service.stop()
    assert await asyncio.wait_for(poll, 5) == []


# ---- a gateway worker's door, attached to the owner's file ---------------------------


@pytest.fixture
async def attached(
    tmp_path: Path,
) -> AsyncIterator[tuple[MailboxService, AttachedMailbox, Metrics]]:
    """The owner as the mailbox process runs it, and a door as a gateway worker holds
    it (the owner is reached in-process here instead of over IPC; the bell is real)."""
    config = Config(data_dir=tmp_path, mailbox=MailboxConfig(max_payload_bytes=1000))
    owner = MailboxService()
    await owner.start(ServiceContext("mailbox", config, Metrics(), tmp_path, tmp_path, None))  # type: ignore[arg-type]
    metrics = Metrics()  # the worker's own
    door = AttachedMailbox(
        config, tmp_path, owner, mailbox_counters(metrics), metrics.rejected_total
    )
    yield owner, door, metrics
    door.close()
    await owner.stop()


def _sample(metrics: Metrics, line_start: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


async def test_an_attached_send_wakes_a_receive_waiting_at_the_owner(
    attached: tuple[MailboxService, AttachedMailbox, Metrics],
) -> None:
    owner, door, _ = attached
    t0 = time.monotonic()
    waiting = asyncio.create_task(door.receive("t", wait_s=10))  # nothing yet: the owner waits
    await wait_until(lambda: owner.waiters() == 1, 5)
    await door.send("t", b"hello")
    got = await asyncio.wait_for(waiting, 5)
    assert [d.payload for d in got] == [b"hello"]
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("waiting_first", [False, True], ids=["lease_first", "waiter_first"])
async def test_a_lease_taken_at_the_door_expires_into_a_receive_waiting_at_the_owner(
    attached: tuple[MailboxService, AttachedMailbox, Metrics], waiting_first: bool
) -> None:
    """Whether the owner's waiter came before the lease (the lease is rung) or after it
    (the waiter asks the file when the topic's next lease ends)."""
    owner, door, _ = attached
    await door.send("t", b"work")
    elsewhere = asyncio.create_task(owner.receive("other", wait_s=10)) if waiting_first else None
    if elsewhere is not None:
        await wait_until(lambda: owner.waiters() == 1, 5)
    first = await door.receive("t", visibility_s=0.3)
    assert [d.payload for d in first] == [b"work"]
    t0 = time.monotonic()
    again = await owner.receive("t", wait_s=10)
    assert [(d.payload, d.delivery_count) for d in again] == [(b"work", 2)]
    assert time.monotonic() - t0 < 5
    if elsewhere is not None:
        await door.send("other", b"done")
        assert len(await asyncio.wait_for(elsewhere, 5)) == 1


async def test_the_door_counts_what_it_did(
    attached: tuple[MailboxService, AttachedMailbox, Metrics],
) -> None:
    _, door, metrics = attached
    await door.send_batch("t", [Outgoing(b"a"), Outgoing(b"b", idempotency_key="k")])
    await door.send("t", b"b", idempotency_key="k")
    got = await door.receive("t", max_messages=10)
    settled = await door.ack([d.receipt for d in got[:1]])
    await door.nack([d.receipt for d in got[1:]])
    with pytest.raises(RonError) as err:
        await door.send("t", b"x" * 1001)
    assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert settled.done == 1
    assert _sample(metrics, "mailbox_sent_total") == 2
    assert _sample(metrics, "mailbox_duplicates_total") == 1
    assert _sample(metrics, "mailbox_delivered_total") == 2
    assert _sample(metrics, "mailbox_acked_total") == 1
    assert _sample(metrics, "mailbox_nacked_total") == 1
    assert _sample(metrics, 'rejected_total{reason="mailbox_payload_too_large"}') == 1
    assert (await door.stats("t")).depth == 1  # the owner's answer, from the same file


async def test_the_door_refuses_what_the_owner_refuses(
    attached: tuple[MailboxService, AttachedMailbox, Metrics],
) -> None:
    _, door, _ = attached
    for call in (
        door.send("bad topic", b"x"),
        door.receive("t", max_messages=0),
        door.receive("t", wait_s=21),
        door.ack(["not-a-receipt"]),
        door.extend([], visibility_s=-1),
    ):
        with pytest.raises(RonError) as err:
            await call
        assert err.value.code is ErrorCode.BAD_REQUEST


async def test_an_empty_poll_at_the_door_does_not_queue_for_the_writers_lock(
    attached: tuple[MailboxService, AttachedMailbox, Metrics], tmp_path: Path
) -> None:
    """Another writer holds the file's write lock for a while: a receive on an empty
    topic still answers at once (it reads), and one on a topic with work waits its turn."""
    import fcntl
    import threading

    _, door, _ = attached
    await door.send("busy", b"x")
    fd = os.open(tmp_path / "mailbox.db.wlock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(1.0, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    release.start()
    try:
        t0 = time.monotonic()
        assert await door.receive("empty") == []
        assert time.monotonic() - t0 < 0.5
        got = await door.receive("busy")  # waits for the lock, then leases
        assert [d.payload for d in got] == [b"x"]
        assert time.monotonic() - t0 >= 0.9
    finally:
        release.join()
        os.close(fd)
