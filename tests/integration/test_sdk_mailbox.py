"""The SDK's mailbox calls against a real node, each test run with Client and AsyncClient."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ron.sdk import (
    BadRequest,
    Conflict,
    InvalidArgument,
    NotFound,
    QuotaExhausted,
    RetryEvent,
    TransportError,
)
from support.node import RunningNode, run_node
from support.sdk import FLAVORS, make_client
from support.tcpproxy import tcp_proxy
from support.waiting import wait_until_sync

TINY_KEY = "sdk-tiny-mailbox-key-01"
CONFIG = f"""
[mailbox]
max_deliveries_by_topic = {{ "dlq-sync" = 1, "dlq-async" = 1 }}

[gateway.tenants.tiny]
api_keys = ["{TINY_KEY}"]
rps = 1
burst = 1
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("sdk-mailbox"), config=CONFIG) as n:
        yield n


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(flavor: str, node: RunningNode) -> Iterator[Any]:
    with make_client(flavor, node.http, cap=node.token) as c:
        yield c


def request_lines(node: RunningNode, corr_id: str, count: int) -> list[dict[str, Any]]:
    def lines() -> list[dict[str, Any]] | None:
        got = []
        for raw in node.logs().splitlines():
            if corr_id in raw:
                entry = json.loads(raw)
                if entry.get("msg") == "request" and entry.get("corr_id") == corr_id:
                    got.append(entry)
        return got if len(got) >= count else None

    return wait_until_sync(lines, 10, f"{count} log lines for {corr_id}")


def test_send_receive_ack_round_trip(client: Any, flavor: str) -> None:
    topic = f"rt-{flavor}"
    sent = client.send(topic, b"\x00binary\xff", headers={"kind": "greeting"})
    assert not sent.duplicate and sent.idempotency_key
    got = client.receive(topic, max=10, visibility_s=30)
    assert [(m.msg_id, m.payload, dict(m.headers)) for m in got] == [
        (sent.msg_id, b"\x00binary\xff", {"kind": "greeting"})
    ]
    assert got[0].delivery_count == 1 and got[0].topic == topic
    stats = client.stats(topic)
    assert (stats.depth, stats.in_flight) == (0, 1)
    assert client.ack(got[0]).done == 1
    assert client.receive(topic, max=10) == []
    assert client.stats(topic).in_flight == 0


def test_a_receive_acks_the_batch_before_it(client: Any, flavor: str) -> None:
    topic = f"loop-{flavor}"
    client.send_batch(topic, [b"1", b"2", b"3", b"4", b"5"])
    seen: list[bytes] = []
    got: list[Any] = []
    while True:
        got = client.receive(topic, max=2, ack=got)
        if not got:
            break
        seen += [m.payload for m in got]
        assert client.stats(topic).in_flight == len(got)  # only this batch is held
    assert seen == [b"1", b"2", b"3", b"4", b"5"]
    stats = client.stats(topic)
    assert (stats.depth, stats.in_flight) == (0, 0)


def test_nack_redelivers_and_delete_removes(client: Any, flavor: str) -> None:
    topic = f"nack-{flavor}"
    first = client.send(topic, "text payloads are UTF-8")
    [msg] = client.receive(topic)
    assert msg.payload == b"text payloads are UTF-8"
    assert client.nack(msg).done == 1
    [again] = client.receive(topic)
    assert again.msg_id == first.msg_id and again.delivery_count == 2
    assert client.extend(again, visibility_s=60).done == 1
    client.delete(topic, first.msg_id)
    with pytest.raises(NotFound):
        client.delete(topic, first.msg_id)
    assert client.stats(topic).depth == 0


def test_a_stale_receipt_is_a_conflict(client: Any, flavor: str) -> None:
    topic = f"stale-{flavor}"
    client.send(topic, b"lease me")
    [old] = client.receive(topic, visibility_s=0.2)
    [new] = client.receive(topic, wait_s=10)  # returns once the first lease expired
    assert new.msg_id == old.msg_id and new.receipt != old.receipt
    with pytest.raises(Conflict) as info:
        client.ack(old)
    assert info.value.status == 409 and info.value.stale == [0] and not info.value.retryable
    assert client.ack(new).done == 1


def test_idempotency_key_given_by_the_caller_deduplicates(client: Any, flavor: str) -> None:
    topic = f"idem-{flavor}"
    a = client.send(topic, b"once", idempotency_key=f"order-42-{flavor}")
    b = client.send(topic, b"once", idempotency_key=f"order-42-{flavor}")
    assert a.msg_id == b.msg_id and b.duplicate
    assert client.stats(topic).depth == 1


def test_batch_send(client: Any, flavor: str) -> None:
    topic = f"batch-{flavor}"
    results = client.send_batch(topic, [b"m1", (b"m2", {"n": "2"}), b"m3"])
    assert len({r.msg_id for r in results}) == 3
    got = client.receive(topic, max=10)
    assert [m.payload for m in got] == [b"m1", b"m2", b"m3"]
    assert dict(got[1].headers) == {"n": "2"}


def test_dead_letters_are_listed_and_redriven(client: Any, flavor: str) -> None:
    topic = f"dlq-{flavor}"  # max_deliveries = 1 for this topic
    sent = client.send(topic, b"poison")
    [msg] = client.receive(topic)
    client.nack(msg)
    wait_until_sync(lambda: client.stats(topic).dlq_depth == 1, 10, "the dead letter")
    page = client.dlq_list(topic)
    assert [(d.msg_id, d.payload) for d in page.messages] == [(sent.msg_id, b"poison")]
    assert page.next_cursor is None
    assert client.dlq_redrive(topic) == 1
    assert client.stats(topic).dlq_depth == 0
    [back] = client.receive(topic)
    assert back.payload == b"poison"


def test_subscribe_pushes_messages_as_they_arrive(client: Any, flavor: str) -> None:
    topic = f"sub-{flavor}"
    client.send(topic, b"before")
    received = []
    with client.subscribe(topic, visibility_s=30) as sub:
        for msg in sub:
            received.append(msg.payload)
            client.ack(msg)
            if msg.payload == b"before":
                client.send(topic, b"after")  # sent while subscribed: pushed live
            else:
                break
    assert received == [b"before", b"after"]
    assert client.stats(topic).depth == 0


def test_invalid_input_is_refused_with_typed_errors(client: Any, flavor: str) -> None:
    with pytest.raises(InvalidArgument):
        client.send("no spaces allowed", b"x")
    with pytest.raises(InvalidArgument):
        client.send(f"hdr-{flavor}", b"x", headers={"Bad Name": "v"})
    with pytest.raises(BadRequest) as info:  # the node's own limit: values up to 256
        client.send(f"hdr-{flavor}", b"x", headers={"long": "v" * 300})
    assert info.value.status == 400 and info.value.corr_id and not info.value.retryable


def test_send_succeeds_under_429_after_waiting_retry_after(node: RunningNode, flavor: str) -> None:
    topic = f"quota-{flavor}"
    corr = f"q-send-{flavor}"
    events: list[RetryEvent] = []
    tiny = node.mint("tiny")  # the tenant named in the config: its tiny quota applies
    with make_client(flavor, node.http, cap=tiny, on_retry=events.append) as c:
        drain = f"{node.http}/v1/mailbox/{topic}/stats"
        auth = {"Authorization": f"Bearer {tiny}"}
        wait_until_sync(
            lambda: httpx.get(drain, headers=auth).status_code == 429,
            10,
            "the tiny bucket to be empty",
        )
        started = time.monotonic()
        sent = c.send(topic, b"under pressure", corr_id=corr)
        elapsed = time.monotonic() - started
    assert events and all(isinstance(e.error, QuotaExhausted) for e in events)
    for event in events:
        assert event.corr_id == corr
        assert event.error.retry_after is not None and event.delay_s >= event.error.retry_after
    assert elapsed >= sum(e.error.retry_after or 0 for e in events)
    lines = request_lines(node, corr, len(events) + 1)
    assert [line["status"] for line in lines] == [429] * len(events) + [201]
    with make_client(flavor, node.http, cap=node.token) as plain:
        [msg] = plain.receive(topic, max=10)
    assert msg.msg_id == sent.msg_id and msg.payload == b"under pressure"


def test_a_send_whose_response_was_lost_is_stored_once(node: RunningNode, flavor: str) -> None:
    topic = f"lost-{flavor}"
    corr = f"lost-send-{flavor}"
    events: list[RetryEvent] = []
    with (
        tcp_proxy(node.http) as proxy,
        make_client(flavor, proxy.url, cap=node.token, on_retry=events.append) as c,
    ):
        proxy.plan.append("drop_response")
        sent = c.send(topic, b"exactly once", corr_id=corr)
    assert proxy.seen[:2] == ["drop_response", "pass"]
    assert len(events) == 1 and isinstance(events[0].error, TransportError)
    assert sent.duplicate  # the retry found the first attempt's message by its key
    lines = request_lines(node, corr, 2)
    assert [line["status"] for line in lines] == [201, 201]  # both reached the node
    with make_client(flavor, node.http, cap=node.token) as plain:
        got = plain.receive(topic, max=10)
        assert [m.msg_id for m in got] == [sent.msg_id]
        assert plain.stats(topic).depth == 0


def test_a_sync_subscription_closed_from_another_thread_ends_quietly(node: RunningNode) -> None:
    import threading

    from ron.sdk import Client

    with Client(node.http, cap=node.token) as c:
        sub = c.subscribe("idle-topic")
        got: list[object] = []
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                got.extend(sub)
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        assert sub.connected.wait(10)
        sub.close()  # the reader is blocked waiting for events: this must wake it
        reader.join(5)
        assert not reader.is_alive() and got == [] and errors == []


def test_a_subscription_reconnects_after_its_connection_drops(
    node: RunningNode, flavor: str
) -> None:
    topic = f"resub-{flavor}"
    events: list[RetryEvent] = []
    with make_client(flavor, node.http, cap=node.token) as direct:
        direct.send(topic, b"still delivered")
    with (
        tcp_proxy(node.http) as proxy,
        make_client(flavor, proxy.url, cap=node.token, on_retry=events.append) as c,
    ):
        proxy.plan.append("drop_response")  # the first stream dies as it starts
        # The lost stream had leased the message: it comes back when that lease expires.
        with c.subscribe(topic, visibility_s=1) as sub:
            msg = next(iter(sub))
            c.ack(msg)
    assert msg.payload == b"still delivered"
    assert [type(e.error) for e in events] == [TransportError]
    assert proxy.seen[:2] == ["drop_response", "pass"]
