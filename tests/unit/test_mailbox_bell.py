"""The mailbox's bell: an attached process's news reaches the owner over a real socket.

Each test binds a receiver in a temporary run dir, rings it from a sender, and reads
what arrived; nothing waits on time except the retry test, which waits for the resent
datagram with a deadline.
"""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack
import pytest

from ron.services.mailbox.bell import MAX_TOPICS, BellReceiver, BellSender, Rung
from support.waiting import wait_until


class Heard:
    def __init__(self) -> None:
        self.rungs: list[Rung] = []

    def __call__(self, rung: Rung) -> None:
        self.rungs.append(rung)


def test_a_rung_round_trips_and_garbage_is_refused() -> None:
    rung = Rung()
    rung.notify.add(("ready", "t"))
    rung.due["t"] = 123
    rung.counts[("sent", "")] += 10
    rung.counts[("rejected", "mailbox_too_large")] += 1
    again = Rung.decode(rung.encode())
    assert again == rung
    for bad in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb([False, [[1, "t"]], [], []])):
        with pytest.raises(ValueError):
            Rung.decode(bad)
    with pytest.raises(ValueError):
        Rung.decode(msgpack.packb([False, [], [["t", "soon"]], []]))


async def test_news_is_coalesced_per_operation_and_applied_by_the_owner(tmp_path: Path) -> None:
    heard = Heard()
    receiver = BellReceiver(tmp_path / "bell", heard)
    sender = BellSender(tmp_path / "bell")
    try:
        sender.notify("ready", "a")
        sender.notify("ready", "a")
        sender.due("a", 500)
        sender.due("a", 400)
        sender.due("a", 900)  # only the earliest due time of a topic matters
        sender.count("sent", 3)
        sender.count("sent", 2)
        sender.ring()
        sender.ring()  # nothing new: nothing sent
        receiver.drain()
        assert len(heard.rungs) == 1
        (rung,) = heard.rungs
        assert rung.notify == {("ready", "a")}
        assert rung.due == {"a": 400}
        assert rung.counts == {("sent", ""): 5}
    finally:
        sender.close()
        receiver.close()
    assert not (tmp_path / "bell").exists()


async def test_a_bad_datagram_is_counted_and_the_next_one_still_applies(tmp_path: Path) -> None:
    heard = Heard()
    receiver = BellReceiver(tmp_path / "bell", heard)
    sender = BellSender(tmp_path / "bell")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        raw.sendto(b"not msgpack \xc1", str(tmp_path / "bell"))
        sender.notify("released", "b")
        sender.ring()
        receiver.drain()
        assert receiver.bad == 1
        assert [r.notify for r in heard.rungs] == [{("released", "b")}]
    finally:
        raw.close()
        sender.close()
        receiver.close()


async def test_too_many_topics_become_one_wake_everything(tmp_path: Path) -> None:
    heard = Heard()
    receiver = BellReceiver(tmp_path / "bell", heard)
    sender = BellSender(tmp_path / "bell")
    try:
        for i in range(MAX_TOPICS + 1):
            sender.notify("ready", f"t{i}")
        sender.ring()
        receiver.drain()
        assert heard.rungs[0].everything and not heard.rungs[0].notify
    finally:
        sender.close()
        receiver.close()


async def test_news_waits_while_the_owner_is_full_and_is_dropped_when_it_is_gone(
    tmp_path: Path,
) -> None:
    heard = Heard()
    receiver = BellReceiver(tmp_path / "bell", heard)
    sender = BellSender(tmp_path / "bell")
    try:
        rang = 0
        while sender._retry is None:  # fill the owner's queue (it is not reading)
            sender.count("sent")
            sender.ring()
            rang += 1
            assert rang < 100_000
        sender.count("sent")  # more news while the retry is pending joins it
        receiver.start()  # the owner reads again: the retry gets through
        await wait_until(lambda: sum(r.counts[("sent", "")] for r in heard.rungs) == rang + 1, 10)
        assert sender.dropped == 0
    finally:
        receiver.close()
    sender.count("sent")
    sender.ring()  # nobody listening: dropped, not kept
    assert sender.dropped == 1
    sender.close()
