"""The mailbox's bell: an attached process's news reaches the owner over a real socket,
and only while the owner has waiters.

Each test binds a receiver in a temporary run dir, rings it from a sender, and reads
what arrived; nothing waits on time except the retry test, which waits for the resent
datagram with a deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from ron.services.mailbox.bell import (
    BELL_NAME,
    MAX_TOPICS,
    BellReceiver,
    BellSender,
    Rung,
    WaitingCount,
)
from support.waiting import wait_until


class Heard:
    def __init__(self) -> None:
        self.rungs: list[Rung] = []

    def __call__(self, rung: Rung) -> None:
        self.rungs.append(rung)


@pytest.fixture
def bell(tmp_path: Path) -> Iterator[tuple[BellReceiver, BellSender, Heard]]:
    """An owner with one waiter (so that rings are sent) and a sender."""
    heard = Heard()
    receiver = BellReceiver(tmp_path, heard)
    receiver.waiting.up()
    sender = BellSender(tmp_path)
    yield receiver, sender, heard
    sender.close()
    receiver.close()


def test_a_rung_round_trips_and_garbage_is_refused() -> None:
    rung = Rung()
    rung.notify.add(("ready", "t"))
    rung.due["t"] = 123
    assert Rung.decode(rung.encode()) == rung
    for bad in (
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb([False, [[1, "t"]], []]),
        msgpack.packb([False, [], [["t", "soon"]]]),
        msgpack.packb([False, [["ready", "x" * 300]], []]),
    ):
        with pytest.raises(ValueError):
            Rung.decode(bad)


def test_news_is_coalesced_per_operation(
    bell: tuple[BellReceiver, BellSender, Heard],
) -> None:
    receiver, sender, heard = bell
    sender.notify("ready", "a")
    sender.notify("ready", "a")
    sender.due("a", 500)
    sender.due("a", 400)
    sender.due("a", 900)  # only the earliest due time of a topic matters
    sender.ring()
    sender.ring()  # nothing new: nothing sent
    receiver.drain()
    assert len(heard.rungs) == 1
    assert heard.rungs[0].notify == {("ready", "a")}
    assert heard.rungs[0].due == {"a": 400}


def test_nothing_is_rung_while_the_owner_has_no_waiters(
    bell: tuple[BellReceiver, BellSender, Heard],
) -> None:
    receiver, sender, heard = bell
    receiver.waiting.down()
    sender.notify("ready", "a")
    sender.ring()  # moot: dropped, not kept for later
    receiver.waiting.up()
    sender.notify("ready", "b")
    sender.ring()
    receiver.drain()
    assert [r.notify for r in heard.rungs] == [{("ready", "b")}]
    assert sender.rung == 1


def test_the_waiting_count_survives_an_owner_restart(tmp_path: Path) -> None:
    """A sender's mapping stays the live one: the file is reset, never replaced."""
    first = WaitingCount(tmp_path / "w", owner=True)
    reader = WaitingCount(tmp_path / "w", owner=False)
    assert not reader.any()
    first.up()
    assert reader.any()
    first.close()  # the owner dies with a waiter counted
    second = WaitingCount(tmp_path / "w", owner=True)
    assert not reader.any()
    second.up()
    assert reader.any()
    second.close()
    reader.close()
    assert WaitingCount(tmp_path / "none", owner=False).any()  # unknown: ring


def test_a_bad_datagram_is_counted_and_the_next_one_still_applies(tmp_path: Path) -> None:
    heard = Heard()
    refused: list[int] = []
    receiver = BellReceiver(tmp_path, heard, on_bad=lambda: refused.append(1))
    receiver.waiting.up()
    sender = BellSender(tmp_path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            raw.sendto(b"not msgpack \xc1", str(tmp_path / BELL_NAME))
        sender.notify("released", "b")
        sender.ring()
        receiver.drain()
        assert receiver.bad == 1 and refused == [1]  # the owner counts it in a metric
        assert [r.notify for r in heard.rungs] == [{("released", "b")}]
    finally:
        sender.close()
        receiver.close()


def test_too_many_topics_become_one_wake_everything(
    bell: tuple[BellReceiver, BellSender, Heard],
) -> None:
    receiver, sender, heard = bell
    for i in range(MAX_TOPICS + 1):
        sender.notify("ready", f"t{i}")
    sender.ring()
    receiver.drain()
    assert heard.rungs[0].everything and not heard.rungs[0].notify


async def test_news_waits_while_the_owner_is_full_and_is_dropped_when_it_is_gone(
    bell: tuple[BellReceiver, BellSender, Heard],
) -> None:
    receiver, sender, heard = bell
    sent = 0
    while sender._retry is None:  # fill the owner's queue (it is not reading)
        sender.notify("ready", f"t{sent}")
        sender.ring()
        sent += 1
        assert sent < 100_000
    sender.notify("ready", "late")  # more news while the retry is pending joins it
    receiver.start()  # the owner reads again: the retry gets through
    await wait_until(lambda: sum(len(r.notify) for r in heard.rungs) == sent + 1, 10)
    assert ("ready", "late") in heard.rungs[-1].notify
    assert sender.dropped == 0
    receiver.close()
    sender.notify("ready", "x")
    sender.ring()  # nobody listening (and no count to read): dropped
    assert sender.dropped == 1
