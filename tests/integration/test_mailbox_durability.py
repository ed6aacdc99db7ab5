"""Nothing acknowledged is lost when the processes that write the mailbox are SIGKILLed.

A producer sends N messages (each with an idempotency key, retried until a 201), a
consumer receives and acks them (with separate ack calls, or each batch's ack carried
by the next receive), and meanwhile, at random points of progress, the mailbox process
and the gateway workers (which write the same file themselves: they serve sends,
receives and acks attached to it) are killed with SIGKILL in turn. After the restarts:

- every send that was answered 201 is eventually received (none lost);
- no message comes back after its ACK was answered 200 (acks are durable too).

Leases are short (1 s) so that messages leased by a call the kill interrupted come
back quickly.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from support.node import RunningNode, run_node
from support.waiting import wait_until_sync

N = 300
KILLS = 4
CONFIG = """
[mailbox]
default_visibility_s = 1
"""
ENV = {
    "RON_GATEWAY__QUOTA__ENABLED": "false",
    "RON_SUPERVISOR__MAX_RESTARTS": "100",
    # Backoff grows with every restart in the window; the tests kill on purpose, often.
    "RON_SUPERVISOR__BACKOFF_MAX_S": "0.5",
}
TOPIC = "durable"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("durable"), config=CONFIG, env=ENV) as n:
        yield n


class Ledger:
    """What the clients were told, shared by the producer and consumer threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, str] = {}  # payload -> msg_id, for sends answered 201
        self.received: set[str] = set()  # payloads seen by the consumer
        self.acked: set[str] = set()  # msg_ids whose ACK was answered 200
        self.came_back: list[str] = []  # msg_ids received again after their 200 ACK
        self.producer_done = threading.Event()
        self.stop = threading.Event()
        self.errors = 0


def produce(url: str, auth: dict[str, str], ledger: Ledger, topic: str) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=auth) as http:
        for i in range(N):
            body = b"msg-%05d" % i
            while not ledger.stop.is_set():
                try:
                    reply = http.post(
                        f"/v1/mailbox/{topic}/messages",
                        content=body,
                        headers={"Idempotency-Key": f"k-{i}"},
                    )
                except httpx.HTTPError:
                    ledger.errors += 1
                    continue
                if reply.status_code == 201:
                    with ledger.lock:
                        ledger.sent[body.decode()] = reply.json()["msg_id"]
                    break
                assert reply.json()["retryable"], reply.text  # only outages may fail
                ledger.errors += 1
    ledger.producer_done.set()


def _seen(ledger: Ledger, messages: list[dict[str, Any]]) -> None:
    with ledger.lock:
        for m in messages:
            if m["msg_id"] in ledger.acked:
                ledger.came_back.append(m["msg_id"])
            ledger.received.add(base64.b64decode(m["payload_b64"]).decode())


def consume(url: str, auth: dict[str, str], ledger: Ledger, topic: str) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=auth) as http:
        while not ledger.stop.is_set():
            try:
                reply = http.post(f"/v1/mailbox/{topic}/receive", json={"max": 10, "wait_s": 0.5})
                if reply.status_code != 200:
                    ledger.errors += 1
                    continue
                messages = reply.json()["messages"]
                _seen(ledger, messages)
                if not messages:
                    continue
                reply = http.post(
                    "/v1/mailbox/ack", json={"receipts": [m["receipt"] for m in messages]}
                )
            except httpx.HTTPError:
                ledger.errors += 1
                continue
            if reply.status_code == 200:
                with ledger.lock:
                    ledger.acked.update(m["msg_id"] for m in messages)
            else:
                ledger.errors += 1


def consume_acking(url: str, auth: dict[str, str], ledger: Ledger, topic: str) -> None:
    """Each batch is acked by the receive that fetches the next one."""
    done: list[dict[str, Any]] = []  # received, to be acked by the next receive
    with httpx.Client(base_url=url, timeout=10, headers=auth) as http:
        while not ledger.stop.is_set():
            ask: dict[str, Any] = {"max": 10, "wait_s": 0.5}
            if done:
                ask["ack"] = [m["receipt"] for m in done]
            try:
                reply = http.post(f"/v1/mailbox/{topic}/receive", json=ask)
            except httpx.HTTPError:
                ledger.errors += 1
                continue  # the ack may or may not have been committed: ask again
            if reply.status_code == 409:
                done = []  # a lease expired during a restart: those come back unacked
                continue
            if reply.status_code != 200:
                ledger.errors += 1
                continue
            with ledger.lock:
                ledger.acked.update(m["msg_id"] for m in done)
            done = reply.json()["messages"]
            _seen(ledger, done)


Consumer = Callable[[str, dict[str, str], Ledger, str], None]


@pytest.mark.slow
@pytest.mark.parametrize("consumer", [consume, consume_acking], ids=["ack", "ack_on_receive"])
def test_acknowledged_messages_survive_sigkill_of_every_mailbox_writer(
    node: RunningNode, consumer: Consumer
) -> None:
    rng = random.Random()
    ledger = Ledger()
    workers = node.gateway_workers()
    # The owner twice, and gateway workers (the clients' connections die with them).
    victims = ["mailbox", workers[0], "mailbox", workers[-1]]
    topic = f"{TOPIC}-{consumer.__name__}"
    threads = [
        threading.Thread(target=produce, args=(node.http, node.auth, ledger, topic), daemon=True),
        threading.Thread(target=consumer, args=(node.http, node.auth, ledger, topic), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        # Kill at random points of progress, while both clients are busy.
        marks = sorted(rng.sample(range(10, N - 20), KILLS))
        for mark, victim in zip(marks, victims, strict=True):

            def reached(mark: int = mark) -> bool:
                with ledger.lock:
                    return len(ledger.sent) >= mark

            wait_until_sync(reached, 60, f"{mark} acknowledged sends")
            pid = node.service_pid(victim)
            os.kill(pid, signal.SIGKILL)
            node.wait_healthy(victim, other_than_pid=pid, timeout=30)
        assert ledger.producer_done.wait(60), "the producer did not finish"

        def all_received() -> bool:
            with ledger.lock:
                return set(ledger.sent) <= ledger.received

        wait_until_sync(all_received, 60, "every acknowledged send to be received")
    finally:
        ledger.stop.set()
        for t in threads:
            t.join(30)

    assert len(ledger.sent) == N
    assert len(set(ledger.sent.values())) == N  # idempotent retries stored nothing twice
    missing = set(ledger.sent) - ledger.received
    assert not missing, f"{len(missing)} acknowledged sends were lost"
    assert not ledger.came_back, f"acked messages came back: {ledger.came_back[:5]}"
    restarts = {s["service"]: s["restarts"] for s in node.status()["services"]}
    assert restarts["mailbox"] >= victims.count("mailbox")
    assert all(restarts[w] >= 1 for w in set(victims) - {"mailbox"})
    # Whatever is left (delivered but not acked when a kill hit) comes back, and the
    # topic drains: the store agrees with what the clients saw.
    with httpx.Client(base_url=node.http, timeout=10, headers=node.auth) as http:

        def drained() -> bool:
            got = http.post(f"/v1/mailbox/{topic}/receive", json={"max": 100, "wait_s": 1})
            messages = got.json()["messages"]
            assert not any(m["msg_id"] in ledger.acked for m in messages)
            if messages:
                http.post("/v1/mailbox/ack", json={"receipts": [m["receipt"] for m in messages]})
            stats = http.get(f"/v1/mailbox/{topic}/stats").json()
            return bool(stats["depth"] == 0 and stats["in_flight"] == 0 and not messages)

        wait_until_sync(drained, 30, "the topic to drain")


def test_a_subscription_outlives_a_mailbox_restart(node: RunningNode) -> None:
    with (
        httpx.Client(base_url=node.http, timeout=30, headers=node.auth) as http,
        http.stream("GET", "/v1/mailbox/resub/subscribe") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == ": subscribed"
        pid = node.service_pid("mailbox")
        os.kill(pid, signal.SIGKILL)
        node.wait_healthy("mailbox", other_than_pid=pid, timeout=30)

        def sent() -> str | None:
            with httpx.Client(base_url=node.http, timeout=10, headers=node.auth) as other:
                reply = other.post("/v1/mailbox/resub/messages", content=b"after the crash")
            return str(reply.json()["msg_id"]) if reply.status_code == 201 else None

        msg_id = wait_until_sync(sent, 30, "a send after the restart")
        data = next(line for line in lines if line.startswith("data: "))
    message = json.loads(data.removeprefix("data: "))
    assert message["msg_id"] == msg_id
    assert base64.b64decode(message["payload_b64"]) == b"after the crash"
